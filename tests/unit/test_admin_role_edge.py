"""Who may call the admin routes of templates, access approval and the console, at the
HTTP edge (no database needed: every refusal happens before a query; queue depth reads
the in-memory Kafka): the admin key and any `admin`-role caller; other roles 403
`insufficient_role`; no credentials 401."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from broker.config import parse_config
from tests.unit.edge_app import RoleKeys, bearer, edge_client

ADMIN = "admin-secret-for-the-admin-role-tests-0123456789"
CONFIG = parse_config({
    "models": {"m": {"deployments": ["sim"]}},
    "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}},
})
ADMIN_ONLY: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/console/api/queues", None), ("GET", "/console/api/budgets", None),
    ("GET", "/console/api/workers", None), ("GET", "/console/api/dead-letters", None),
    ("POST", "/console/api/dead-letters/replay", {"ids": ["0:0"]}),
    ("GET", "/v1/admin/templates", None), ("GET", "/v1/admin/templates/t", None),
    ("POST", "/v1/admin/templates", {"name": "t"}),
    ("GET", "/v1/admin/access", None), ("GET", "/v1/admin/access/acc_1", None),
    ("POST", "/v1/admin/access", {}), ("POST", "/v1/admin/access/acc_1/approve", None),
    ("POST", "/v1/admin/access/acc_1/deny", None),
]


KEYS = RoleKeys()  # `sk-<role>` is a key of tenant acme with that role


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with edge_client(CONFIG, KEYS, admin_key=ADMIN, kafka="admin-role",
                           prefix="r.") as client:
        yield client


@pytest.mark.parametrize("role", ["tenant_admin", "member", "analyst"])
@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
async def test_other_roles_get_insufficient_role(client: httpx.AsyncClient, role: str,
                                                 method: str, path: str,
                                                 body: dict[str, Any] | None) -> None:
    response = await client.request(method, path, headers=bearer(f"sk-{role}"), json=body)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "insufficient_role"


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
async def test_no_credentials_is_401(client: httpx.AsyncClient, method: str, path: str,
                                     body: dict[str, Any] | None) -> None:
    for headers in ({}, bearer("sk-wrong")):
        response = await client.request(method, path, headers=headers, json=body)
        assert response.status_code == 401, response.text


@pytest.mark.parametrize("secret", [ADMIN, "sk-admin"])
async def test_the_admin_key_and_an_admin_role_see_the_operator_views(
        client: httpx.AsyncClient, secret: str) -> None:
    me = (await client.get("/console/api/me", headers=bearer(secret))).json()
    assert (me["admin"], me["tenant"], me["lists_keys"]) == (True, None, True)
    queues = await client.get("/console/api/queues", headers=bearer(secret))
    assert queues.status_code == 200, queues.text
    assert {row["model"] for row in queues.json()["data"]} == {"m"}
    # Past the role check, a replay's ids are checked (before Kafka or the database).
    replay = await client.post("/console/api/dead-letters/replay", headers=bearer(secret),
                               json={"ids": ["../etc"]})
    assert replay.status_code == 400, replay.text


@pytest.mark.parametrize("role", ["tenant_admin", "member", "analyst"])
async def test_other_roles_keep_their_tenants_console(client: httpx.AsyncClient,
                                                      role: str) -> None:
    me = await client.get("/console/api/me", headers=bearer(f"sk-{role}"))
    assert me.status_code == 200, me.text
    assert (me.json()["admin"], me.json()["tenant"]) == (False, "acme")
    assert me.json()["lists_keys"] is (role == "tenant_admin")  # as /console/api/keys answers
