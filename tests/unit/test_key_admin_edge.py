"""Refusals at the HTTP edge that need no database (every one happens before a query;
the edge app's database is unreachable, so a test that reached one fails): who may list
keys in the console, a daily spend alert of 0, and a key's unlisted gated model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from broker.config import parse_config
from ingress.services import Principal
from tests.unit.edge_app import RoleKeys, bearer, edge_client

ADMIN = "admin-secret-for-the-key-admin-edge-tests-0123456789"
CONFIG = parse_config({
    "models": {"gpt-4o": {"deployments": ["sim"], "requires_approval": True},
               "gpt-4o-mini": {"deployments": ["sim"]}},
    "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}},
})


# `sk-<role>` is a key of tenant acme with that role; `sk-mini` a member key limited to
# gpt-4o-mini.
KEYS = RoleKeys({"sk-mini": Principal(tenant="acme", api_key_id="key_mini",
                                      models=frozenset({"gpt-4o-mini"}))})


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with edge_client(CONFIG, KEYS, admin_key=ADMIN, kafka="key-admin-edge",
                           prefix="k.") as client:
        yield client


@pytest.mark.parametrize("role", ["member", "analyst"])
async def test_console_keys_need_the_permission_the_admin_keys_route_needs(
    client: httpx.AsyncClient, role: str
) -> None:
    for path in ("/console/api/keys", "/v1/admin/keys"):
        response = await client.get(path, headers=bearer(f"sk-{role}"))
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["code"] == "insufficient_role"


@pytest.mark.parametrize("secret", ["sk-tenant_admin", "sk-admin", ADMIN])
async def test_key_managers_get_past_the_console_keys_check(
    client: httpx.AsyncClient, secret: str
) -> None:
    # Allowed: the route goes on to the (unreachable) database.
    response = await client.get("/console/api/keys", headers=bearer(secret))
    assert response.status_code == 503, response.text


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/v1/admin/tenants/acme"), ("PATCH", "/v1/admin/keys/key_1")])
async def test_a_daily_spend_alert_must_be_positive(client: httpx.AsyncClient, method: str,
                                                    path: str) -> None:
    amounts: tuple[int | str | None, ...] = (0, "0", "-1")
    for amount in amounts:
        refused = await client.request(method, path, headers=bearer(ADMIN),
                                       json={"daily_spend_alert_usd": amount})
        assert refused.status_code == 400, (amount, refused.text)
        assert "daily_spend_alert_usd" in refused.text
    amounts = ("0.01", None)
    for amount in amounts:  # a positive amount sets it, null clears it: both valid
        valid = await client.request(method, path, headers=bearer(ADMIN),
                                     json={"daily_spend_alert_usd": amount})
        assert valid.status_code == 503, (amount, valid.text)  # on to the database


async def test_a_key_limited_to_other_models_gets_404_for_a_gated_model(
    client: httpx.AsyncClient,
) -> None:
    # Not 403 `access_required` naming model:gpt-4o: the key learns nothing about a model
    # it may not use (and no approval is looked up for it).
    response = await client.post("/v1/chat/completions", headers=bearer("sk-mini"), json={
        "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "gpt-4o" in error["message"] and "model:" not in error["message"]
