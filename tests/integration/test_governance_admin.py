"""Governance through the CLI and the admin API (README "Identity and roles", "Budget
alerts"): tenant IP lists from `sluice tenants set`, key roles and IP lists shown by
`sluice keys list` and `GET /v1/admin/keys`, and `PATCH /v1/admin/keys/{id}` changing a
key's role, lists and budget alerts, scoped as the other key routes are. The last test
drives real spend through Kafka until a key's PATCHed threshold fires its signed webhook.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook

from broker.batches.settings import BatchSettings
from broker.settings import IngressSettings, KafkaSettings
from broker.stores.admission import month_of
from broker.webhooks.settings import WebhookSettings
from broker.webhooks.store import register_endpoint, rotate_secret
from ingress.app import create_app
from ingress.postgres import PostgresApiKeys, PostgresRequests
from ingress.services import IngressServices, LedgerAccess
from simulator import SimulatorSettings
from sluice.cli import main
from tests.integration.stack import Stack, demo_config, eventually, running_stack
from tests.integration.test_budget_alerts import deliverer
from tests.integration.webhook_receiver import Hit, Receiver, receiver

pytestmark = pytest.mark.integration
ON_APACHE = pytest.mark.kafka_engine("apache")  # only the end-to-end test needs Kafka

ADMIN_KEY = "sk-admin-governance-tests-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _app(engine: AsyncEngine) -> httpx.AsyncClient:
    """Ingress with the admin API on this test's database (no Kafka: these routes and the
    IP check never reach it). A new client is a new app, so a new access cache."""
    app = create_app(IngressServices(
        settings=IngressSettings(admin_key=ADMIN_KEY),
        kafka=KafkaSettings(kafka_bootstrap="127.0.0.1:1"),
        config=demo_config(), api_keys=PostgresApiKeys(engine),
        requests=PostgresRequests(engine), webhooks=WebhookSettings(),
        batches=BatchSettings(), ledger=LedgerAccess(engine),
    ))
    # httpx's ASGI transport presents every request as coming from 127.0.0.1.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress")


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with _app(engine) as client:
        yield client


async def _cli(database_url: str, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    return await asyncio.to_thread(main, list(argv))


def _line(output: str, word: str) -> str:
    return next(line for line in output.splitlines() if word in line)


async def _new_key(client: httpx.AsyncClient, headers: dict[str, str],
                   **body: Any) -> dict[str, Any]:
    created = await client.post("/v1/admin/keys", headers=headers, json=body)
    assert created.status_code == 201, created.text
    key: dict[str, Any] = created.json()
    return key


def _bearer(key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['secret']}"}


async def test_tenant_ip_deny_from_the_cli_refuses_its_callers(
    engine: AsyncEngine, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with _app(engine) as client:
        acme = await _new_key(client, ADMIN, tenant="acme")
        globex = await _new_key(client, ADMIN, tenant="globex")

    assert await _cli(database_url, monkeypatch, "tenants", "set", "acme",
                      "--ip-deny", "127.0.0.0/8", "--ip-allow", "10.0.0.0/8, 127.0.0.1") == 0
    assert "IP lists allow 10.0.0.0/8,127.0.0.1/32 · deny 127.0.0.0/8" in \
        capsys.readouterr().out
    assert await _cli(database_url, monkeypatch, "tenants", "set", "acme",
                      "--ip-allow", "10.0.0.0/8,10.0.0.300/8") == 2
    refused = capsys.readouterr().err
    assert "--ip-allow" in refused and "'10.0.0.300/8' is not an IP address" in refused
    assert await _cli(database_url, monkeypatch, "tenants", "list") == 0
    listed = _line(capsys.readouterr().out, "acme")
    assert "allow 10.0.0.0/8,127.0.0.1/32 · deny 127.0.0.0/8" in listed  # bad one: unchanged

    async with _app(engine) as client:
        denied = await client.get("/v1/usage", headers=_bearer(acme))
        chat = await client.post("/v1/chat/completions", headers=_bearer(acme), json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        other = await client.get("/v1/usage", headers=_bearer(globex))
        tenants = (await client.get("/v1/admin/tenants", headers=ADMIN)).json()["data"]
    assert denied.status_code == 403 and chat.status_code == 403, (denied.text, chat.text)
    assert {denied.json()["error"]["code"], chat.json()["error"]["code"]} == {"ip_not_allowed"}
    assert other.status_code == 200, other.text  # another tenant's lists do not apply
    [shown] = [tenant for tenant in tenants if tenant["name"] == "acme"]
    assert (shown["ip_allow"], shown["ip_deny"]) == (["10.0.0.0/8", "127.0.0.1/32"],
                                                     ["127.0.0.0/8"])

    assert await _cli(database_url, monkeypatch, "tenants", "set", "acme",
                      "--ip-deny", "none") == 0
    assert "IP lists allow 10.0.0.0/8,127.0.0.1/32\n" in capsys.readouterr().out
    async with _app(engine) as client:  # a fresh access cache
        assert (await client.get("/v1/usage", headers=_bearer(acme))).status_code == 200


async def test_keys_list_shows_roles_ip_lists_and_alerts(
    engine: AsyncEngine, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await _cli(database_url, monkeypatch, "keys", "create", "--tenant", "acme",
                      "--role", "analyst", "--ip-allow", "10.0.0.0/8",
                      "--ip-deny", "10.9.0.0/16", "--monthly-budget-usd", "10") == 0
    created = capsys.readouterr().out
    assert "role analyst" in created
    key_id = created.split("key id ")[1].split(",")[0]
    assert await _cli(database_url, monkeypatch, "keys", "create", "--tenant", "acme",
                      "--ip-deny", "10.0.0.300/8") == 2
    assert "--ip-deny: '10.0.0.300/8'" in capsys.readouterr().err
    assert await _cli(database_url, monkeypatch, "keys", "alerts", key_id,
                      "--alert-thresholds", "50,100", "--daily-spend-alert", "20") == 0
    assert "budget alerts 50,100% · $20/day" in capsys.readouterr().out
    await _spend(engine, key_id, "6")  # fires 50%

    assert await _cli(database_url, monkeypatch, "keys", "list", "--tenant", "acme") == 0
    listing = capsys.readouterr().out
    assert listing.count("key_") == 1  # the refused key was never created
    row = _line(listing, key_id)
    for shown in ("analyst", "allow 10.0.0.0/8 · deny 10.9.0.0/16", "50,100% · $20/day",
                  "50% at $6"):
        assert shown in row, (shown, row)


async def _spend(engine: AsyncEngine, key_id: str, usd: str) -> None:
    """What the ledger does when it records `usd` of the key's usage this month."""
    async with engine.begin() as connection:
        await connection.execute(text(
            "SELECT sluice_spend_add(ARRAY[:scope], ARRAY[CAST(:period AS date)], "
            "ARRAY[CAST(:usd AS numeric)], ARRAY[1::bigint])"),
            {"scope": f"key:{key_id}", "period": month_of(datetime.now(UTC)), "usd": usd})


async def test_patch_changes_a_keys_role_lists_and_alerts(
    client: httpx.AsyncClient, engine: AsyncEngine,
) -> None:
    key = await _new_key(client, ADMIN, tenant="acme", monthly_budget_usd="10")
    assert (key["role"], key["ip_allow"], key["ip_deny"]) == ("member", None, None)
    url = f"/v1/admin/keys/{key['id']}"
    changed = await client.patch(url, headers=ADMIN, json={
        "role": "analyst", "ip_allow": ["192.0.2.0/24", "198.51.100.7"],
        "alert_thresholds_pct": [100, 50], "daily_spend_alert_usd": "25.50"})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["id"], body["role"], body["ip_allow"], body["ip_deny"]) == (
        key["id"], "analyst", ["192.0.2.0/24", "198.51.100.7/32"], None)
    assert (body["alert_thresholds_pct"], body["daily_spend_alert_usd"],
            body["last_alert"]) == ([50, 100], "25.5", None)

    for bad, param in [({"ip_deny": ["10.0.0.300/8"], "alert_thresholds_pct": [90]},
                        "ip_deny"),
                       ({"role": None}, "role"), ({"role": "owner"}, "role"),
                       ({"alert_thresholds_pct": [0]}, None), ({"rpm": 5}, None)]:
        refused = await client.patch(url, headers=ADMIN, json=bad)
        assert refused.status_code == 400, (bad, refused.text)
        if param is not None:
            assert refused.json()["error"]["param"] == param
    missing = await client.patch("/v1/admin/keys/key_nope", headers=ADMIN, json={})
    assert missing.status_code == 404

    await _spend(engine, key["id"], "5")  # 50% of the key's $10
    cleared = (await client.patch(url, headers=ADMIN, json={
        "ip_allow": None, "daily_spend_alert_usd": None})).json()
    assert (cleared["role"], cleared["ip_allow"]) == ("analyst", None)
    assert (cleared["alert_thresholds_pct"], cleared["daily_spend_alert_usd"]) == (
        [50, 100], None)  # the refused changes above changed nothing
    assert cleared["last_alert"]["threshold"] == "50%"

    listed = (await client.get("/v1/admin/keys", headers=ADMIN)).json()["data"]
    [shown] = [entry for entry in listed if entry["id"] == key["id"]]
    assert (shown["role"], shown["alert_thresholds_pct"]) == ("analyst", [50, 100])
    assert shown["last_alert"] == cleared["last_alert"]
    assert (shown["last_alert"]["key"], shown["last_alert"]["spend_usd"],
            shown["last_alert"]["period"]) == (key["id"], "5", f"{datetime.now(UTC):%Y-%m}")
    # The key's own caller (an analyst may read usage) sees its rule and its alert.
    usage = (await client.get("/v1/usage", headers=_bearer(key))).json()["alerts"]
    assert {"scope": f"key:{key['id']}", "thresholds_pct": [50, 100],
            "daily_usd": None} in usage["rules"]
    assert [alert["key"] for alert in usage["fired"]] == [key["id"]]

    assert (await client.post(f"{url}/revoke", headers=ADMIN)).status_code == 200
    assert (await client.patch(url, headers=ADMIN, json={"role": "member"})).status_code == 404


async def test_a_tenant_admin_patches_only_its_tenants_non_admin_keys(
    client: httpx.AsyncClient,
) -> None:
    boss = _bearer(await _new_key(client, ADMIN, tenant="acme", role="tenant_admin"))
    member = await _new_key(client, ADMIN, tenant="acme")
    root = await _new_key(client, ADMIN, tenant="acme", role="admin")
    foreign = await _new_key(client, ADMIN, tenant="globex")

    own = await client.patch(f"/v1/admin/keys/{member['id']}", headers=boss, json={
        "role": "analyst", "ip_deny": ["203.0.113.0/24"], "alert_thresholds_pct": [80]})
    assert own.status_code == 200, own.text
    assert (own.json()["role"], own.json()["ip_deny"], own.json()["alert_thresholds_pct"]) \
        == ("analyst", ["203.0.113.0/24"], [80])
    listed = (await client.get("/v1/admin/keys?tenant=globex", headers=boss)).json()["data"]
    assert {entry["tenant"] for entry in listed} == {"acme"}
    assert {entry["id"]: entry["role"] for entry in listed}[member["id"]] == "analyst"

    for key_id, body, status, code in [
        (foreign["id"], {"alert_thresholds_pct": [50]}, 404, "not_found"),
        (member["id"], {"role": "admin"}, 403, "insufficient_role"),
        (root["id"], {"ip_allow": ["192.0.2.1"]}, 403, "insufficient_role"),
    ]:
        refused = await client.patch(f"/v1/admin/keys/{key_id}", headers=boss, json=body)
        assert refused.status_code == status, (body, refused.text)
        if status == 403:
            assert refused.json()["error"]["code"] == code
    by_member = await client.patch(f"/v1/admin/keys/{member['id']}", headers=_bearer(member),
                                   json={"role": "tenant_admin"})
    assert by_member.status_code == 403  # an analyst (formerly member) manages no keys
    keys = {entry["id"]: entry for entry in
            (await client.get("/v1/admin/keys", headers=ADMIN)).json()["data"]}
    assert keys[foreign["id"]]["alert_thresholds_pct"] == []
    assert (keys[member["id"]]["role"], keys[root["id"]]["ip_allow"]) == ("analyst", None)

    # Nor may it revoke a key with the role admin (it could not have made one).
    revoke = await client.post(f"/v1/admin/keys/{root['id']}/revoke", headers=boss)
    assert revoke.status_code == 403, revoke.text
    assert revoke.json()["error"]["code"] == "insufficient_role"

    # An admin demoted through this ingress loses the role here at once (its role was
    # cached by the call before).
    assert (await client.get("/v1/admin/tenants", headers=_bearer(root))).status_code == 200
    demoted = await client.patch(f"/v1/admin/keys/{root['id']}", headers=ADMIN,
                                 json={"role": "member"})
    assert demoted.status_code == 200, demoted.text
    after = await client.get("/v1/admin/tenants", headers=_bearer(root))
    assert after.status_code == 403, after.text


# Answers of 2,000 tokens at $0.60 per million: about $0.0012 per request.
KEY_BUDGET = Decimal("0.0045")


def _alert_hits(hooks: Receiver) -> list[Hit]:
    return [hit for hit in hooks.at("/alerts")
            if json.loads(hit.body)["type"] == "budget.threshold_crossed"]


async def _key_spent(stack: Stack, key_id: str) -> Decimal:
    value = await stack.scalar("SELECT spent_usd FROM spend_accounts WHERE scope = :s "
                               "AND period = :p", s=f"key:{key_id}",
                               p=month_of(datetime.now(UTC)))
    return Decimal(value or 0)


async def _ask_with(stack: Stack, key: dict[str, Any]) -> Decimal:
    """One chat completion with `key`; waits until the ledger recorded the key's spend."""
    before = await _key_spent(stack, key["id"])
    answer = await stack.client.post("/v1/chat/completions", headers=_bearer(key), json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "A saga."}]})
    assert answer.status_code == 200, answer.text

    async def grown() -> Decimal | None:
        spent = await _key_spent(stack, key["id"])
        return spent if spent > before else None

    spent = await eventually(grown, 30)
    assert spent is not None
    return spent


@ON_APACHE
async def test_a_patched_key_threshold_sends_one_signed_webhook(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")
    async with receiver() as hooks, running_stack(
        kafka_settings, database_url, simulator=SimulatorSettings(output_tokens=2000),
        ingress=IngressSettings(sync_timeout_s=20, admin_key=ADMIN_KEY),
    ) as stack, deliverer(kafka_settings, stack):
        secret = (await rotate_secret(stack.engine, "acme", 0)).secret
        assert secret is not None
        await register_endpoint(stack.engine, "acme", hooks.url("/alerts"), None, limit=10)
        key = await _new_key(stack.client, ADMIN, tenant="acme",
                             monthly_budget_usd=str(KEY_BUDGET))
        patched = await stack.client.patch(f"/v1/admin/keys/{key['id']}", headers=ADMIN,
                                           json={"alert_thresholds_pct": [50, 100]})
        assert patched.status_code == 200, patched.text

        assert await _ask_with(stack, key) < KEY_BUDGET / 2
        assert await _ask_with(stack, key) >= KEY_BUDGET / 2  # crosses 50%
        assert await _ask_with(stack, key) < KEY_BUDGET  # more spend, still under 100%

        async def received() -> bool:
            return len(_alert_hits(hooks)) >= 1

        await eventually(received, 30)
        fired = await stack.scalar("SELECT count(*) FROM budget_alerts_fired")
        [hit] = _alert_hits(hooks)
        event: dict[str, Any] = Webhook(secret).verify(hit.body, hit.headers)
        data = event["data"]
        assert (data["tenant"], data["key"], data["scope"], data["threshold"]) == (
            "acme", key["id"], f"key:{key['id']}", "50%")
        assert Decimal(data["budget_usd"]) == KEY_BUDGET
        listed = (await stack.client.get("/v1/admin/keys", headers=ADMIN)).json()["data"]
        [shown] = [entry for entry in listed if entry["id"] == key["id"]]
        assert shown["last_alert"]["threshold"] == "50%"
    assert fired == 1 and len(_alert_hits(hooks)) == 1  # once, not once per request
