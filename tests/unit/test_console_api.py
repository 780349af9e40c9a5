"""The console's shell and JSON endpoints at the HTTP edge: who may see what, and the
assets' content types and security headers (no database needed: every refusal happens
before a query, and queue depth reads the in-memory Kafka)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from broker.config import parse_config
from broker.kafka import TopicPartition
from broker.kafka.memory import _Group, memory_broker
from ingress.services import Principal
from schemas import Topics
from tests.unit.edge_app import bearer, edge_client

ADMIN = "admin-secret-for-the-console-tests-0123456789"
CONFIG = parse_config({
    "models": {"m": {"deployments": ["sim"]}},
    "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}},
})
ADMIN_ONLY = [("GET", "/console/api/queues"), ("GET", "/console/api/budgets"),
              ("GET", "/console/api/workers"), ("GET", "/console/api/dead-letters"),
              ("POST", "/console/api/dead-letters/replay")]
ANY_KEY = [("GET", "/console/api/me"), ("GET", "/console/api/throughput"),
           ("GET", "/console/api/failures"), ("GET", "/console/api/batches"),
           ("GET", "/console/api/keys")]


class _Keys:
    async def principal(self, secret: str, *, cached_only: bool = False) -> Principal | None:
        return Principal(tenant="acme", api_key_id="key_acme") if secret == "sk-acme" else None


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with edge_client(CONFIG, _Keys(), admin_key=ADMIN, kafka="console",
                           prefix="c.") as client:
        yield client


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY + ANY_KEY)
async def test_every_endpoint_needs_a_key(client: httpx.AsyncClient, method: str,
                                          path: str) -> None:
    for headers in ({}, bearer("sk-wrong")):
        response = await client.request(method, path, headers=headers, json={"ids": ["0:0"]})
        assert response.status_code == 401, (path, response.text)


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
async def test_operator_views_refuse_a_tenant_key(client: httpx.AsyncClient, method: str,
                                                  path: str) -> None:
    response = await client.request(method, path, headers=bearer("sk-acme"),
                                    json={"ids": ["0:0"]})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_role"


async def test_me_names_the_viewer(client: httpx.AsyncClient) -> None:
    tenant = (await client.get("/console/api/me", headers=bearer("sk-acme"))).json()
    admin = (await client.get("/console/api/me", headers=bearer(ADMIN))).json()
    assert (tenant["admin"], tenant["tenant"]) == (False, "acme")
    assert (admin["admin"], admin["tenant"]) == (True, None)
    assert admin["models"] == ["m"]


async def test_queue_depth_is_end_minus_committed(client: httpx.AsyncClient) -> None:
    broker = memory_broker("memory://console")
    topic = Topics("c.").requests("m")
    broker.create_topic(topic, 2)
    for n in range(5):
        broker.append(topic, n % 2, None, b"{}", ())  # 3 on partition 0, 2 on partition 1
    broker.groups["c.workers.m"] = _Group(committed={TopicPartition(topic, 0): 2})
    response = await client.get("/console/api/queues", headers=bearer(ADMIN))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    rows = {(row["model"], row["lane"]): row for row in response.json()["data"]}
    # Partition 0: 3 - 2; partition 1 never committed: both of its records wait.
    assert rows[("m", "interactive")]["lag"] == 3
    assert rows[("m", "interactive")]["end"] == 5
    assert rows[("m", "batch")] | {"lag": 0, "partitions": 0} == rows[("m", "batch")]


async def test_replay_checks_its_ids_before_reading_kafka(client: httpx.AsyncClient) -> None:
    response = await client.post("/console/api/dead-letters/replay", headers=bearer(ADMIN),
                                  json={"ids": ["../etc"]})
    assert response.status_code == 400


async def test_the_shell_is_static_and_locked_down(client: httpx.AsyncClient) -> None:
    page = await client.get("/console")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in page.headers
    # Nothing inline: every script and style comes from the package's files.
    assert "<script>" not in page.text and "<style" not in page.text and "style=" not in page.text
    for name, kind in [("console.js", "text/javascript"), ("charts.js", "text/javascript"),
                       ("console.css", "text/css"), ("favicon.svg", "image/svg+xml")]:
        asset = await client.get(f"/console/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert asset.headers["content-security-policy"] == policy
    for missing in ("nope.js", "..%2Fapi.py", "api.py"):
        assert (await client.get(f"/console/static/{missing}")).status_code == 404
