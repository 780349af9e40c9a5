"""API key lifecycle: the CLI, the admin HTTP API, model restrictions and expiry."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.settings import BatchSettings
from broker.settings import IngressSettings, KafkaSettings
from broker.stores.keys import KeyLimits, create_api_key, find_api_key, list_api_keys
from broker.stores.tables import api_keys
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.postgres import PostgresApiKeys, PostgresRequests
from ingress.services import IngressServices, LedgerAccess
from sluice.cli import main
from tests.integration.stack import demo_config

pytestmark = pytest.mark.integration
ADMIN = "admin-secret-for-tests-0123456789abcdef"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}



@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The ingress app without its Kafka lifespan: admin routes and admission checks only."""
    config = demo_config().model_copy(update={"models": {
        **demo_config().models, "other": demo_config().models["gpt-4o-mini"],
    }})
    app = create_app(IngressServices(
        settings=IngressSettings(admin_key=ADMIN),  # type: ignore[arg-type]
        kafka=KafkaSettings(kafka_bootstrap="127.0.0.1:1"),
        config=config,
        api_keys=PostgresApiKeys(engine),
        requests=PostgresRequests(engine),
        webhooks=WebhookSettings(),
        batches=BatchSettings(),
        ledger=LedgerAccess(engine),
    ))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_cli_key_lifecycle(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    assert main(["keys", "create", "--tenant", "acme", "--name", "ci", "--models",
                 "gpt-4o-mini,other", "--rpm", "60", "--tpm", "1000",
                 "--monthly-budget-usd", "12.50", "--monthly-budget-tokens", "90000",
                 "--expires", "30d"]) == 0
    out = capsys.readouterr().out
    secret = out.split()[0]
    key_id = re.search(r"key id (key_\w+)", out)
    assert secret.startswith("sk-sluice-") and key_id is not None

    assert main(["keys", "list", "--tenant", "acme"]) == 0
    listing = capsys.readouterr().out
    assert key_id.group(1) in listing and secret[:14] in listing and secret not in listing
    assert "$12.5 and 90000 tokens" in listing

    assert main(["keys", "revoke", key_id.group(1)]) == 0
    assert main(["keys", "revoke", key_id.group(1)]) == 2  # no longer active
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    assert "revoked" in capsys.readouterr().out


async def test_limits_are_stored_and_expiry_is_enforced(engine: AsyncEngine) -> None:
    limits = KeyLimits(models=frozenset({"a", "b"}), rpm=5, tpm=100,
                       monthly_budget_usd=Decimal("9.99"), monthly_budget_tokens=5000,
                       expires_at=datetime.now(UTC) + timedelta(days=1))
    secret, record = await create_api_key(engine, "acme", "limited", limits)
    assert record.limits == limits and record.may_use("a") and not record.may_use("c")
    found = await find_api_key(engine, secret)
    assert found is not None and found.limits == limits

    past = KeyLimits(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    expired, _ = await create_api_key(engine, "acme", "old", past)
    assert await find_api_key(engine, expired) is None
    assert len(await list_api_keys(engine, "acme")) == 2
    assert await list_api_keys(engine, "nobody") == []


async def test_admin_api_needs_the_admin_key(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    tenant_key, _ = await create_api_key(engine, "acme")
    for headers in ({}, bearer(ADMIN + "x")):
        response = await client.get("/v1/admin/keys", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "invalid_api_key"
        response = await client.post("/v1/admin/keys", json={"tenant": "x"}, headers=headers)
        assert response.status_code == 401
    # A tenant's own key is known but a member: the admin API is not its role's.
    member = bearer(tenant_key)
    response = await client.get("/v1/admin/keys", headers=member)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_role"
    response = await client.post("/v1/admin/keys", json={"tenant": "x"}, headers=member)
    assert response.status_code == 403


async def test_admin_key_lifecycle_over_http(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    admin = bearer(ADMIN)
    response = await client.post("/v1/admin/keys", headers=admin, json={
        "tenant": "globex", "name": "svc", "models": ["other"], "rpm": 10,
        "monthly_budget_usd": "25.5",
    })
    assert response.status_code == 201, response.text
    created = response.json()
    secret = created["secret"]
    assert secret.startswith(created["prefix"]) and created["models"] == ["other"]
    assert created["monthly_budget_usd"] == "25.5000000000"

    listing = (await client.get("/v1/admin/keys?tenant=globex", headers=admin)).json()
    assert [key["id"] for key in listing["data"]] == [created["id"]]
    assert "secret" not in listing["data"][0] and secret not in str(listing)
    async with engine.connect() as connection:
        stored = (await connection.execute(select(api_keys.c.key_hash))).scalars().all()
    assert secret not in stored

    # Restricted to "other": the configured gpt-4o-mini is 404 model_not_found for this key.
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"

    bad = await client.post("/v1/admin/keys", headers=admin, json={"tenant": "", "rpm": 0})
    assert bad.status_code == 400

    revoked = await client.post(f"/v1/admin/keys/{created['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    again = await client.post(f"/v1/admin/keys/{created['id']}/revoke", headers=admin)
    assert again.status_code == 404
    assert await find_api_key(engine, secret) is None


async def test_unrestricted_key_passes_the_model_check(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    secret, _ = await create_api_key(engine, "acme")
    response = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    # Past admission: with Kafka away (no lifespan here) the edge says 503, not 404.
    assert response.status_code == 503


def test_cli_tenant_budgets(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    assert main(["tenants", "list"]) == 0
    assert "sluice tenants set NAME" in capsys.readouterr().out  # names the next step
    assert main(["tenants", "set", "acme", "--monthly-budget-usd", "100",
                 "--store-content", "yes"]) == 0
    assert "budget $100 per month, store content yes" in capsys.readouterr().out
    assert main(["tenants", "set", "acme", "--monthly-budget-tokens", "5000"]) == 0
    assert "$100 and 5000 tokens" in capsys.readouterr().out  # the USD budget stays
    assert main(["tenants", "set", "acme", "--monthly-budget-usd", "none"]) == 0
    assert "budget 5000 tokens per month" in capsys.readouterr().out
    assert main(["tenants", "set", "acme", "--monthly-budget-tokens", "lots"]) == 2
    assert main(["tenants", "list"]) == 0
    listing = capsys.readouterr().out
    assert "acme" in listing and "5000 tokens" in listing and "yes" in listing


async def test_admin_tenants_over_http(client: httpx.AsyncClient) -> None:
    admin = bearer(ADMIN)
    assert (await client.put("/v1/admin/tenants/acme", json={})).status_code == 401
    response = await client.put("/v1/admin/tenants/acme", headers=admin, json={
        "monthly_budget_usd": "50", "store_content": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["monthly_budget_usd"] == "50.0000000000" and body["store_content"] is True
    assert body["spent_usd"] == "0" and body["monthly_budget_tokens"] is None
    cleared = await client.put("/v1/admin/tenants/acme", headers=admin,
                               json={"monthly_budget_usd": None})
    assert cleared.json()["monthly_budget_usd"] is None
    assert cleared.json()["store_content"] is True  # absent fields keep their value
    bad = await client.put("/v1/admin/tenants/acme", headers=admin,
                           json={"monthly_budget_usd": "-1"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "monthly_budget_usd"
    listing = (await client.get("/v1/admin/tenants", headers=admin)).json()
    assert [tenant["name"] for tenant in listing["data"]] == ["acme"]
