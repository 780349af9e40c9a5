"""Budget-alert settings through `sluice tenants set`, `sluice keys alerts` and the admin API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.settings import BatchSettings
from broker.settings import IngressSettings, KafkaSettings
from broker.stores.budget_alerts import alert_rules
from broker.stores.keys import create_api_key
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.postgres import PostgresApiKeys, PostgresRequests
from ingress.services import IngressServices, LedgerAccess
from sluice.cli import main
from tests.integration.stack import demo_config

pytestmark = pytest.mark.integration
ADMIN = "admin-secret-for-tests-0123456789abcdef"


def test_cli_sets_tenant_and_key_alerts(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    assert main(["tenants", "set", "acme", "--monthly-budget-usd", "100",
                 "--alert-thresholds", "80,50,100", "--daily-spend-alert", "25"]) == 0
    assert "budget alerts 50,80,100% · $25/day" in capsys.readouterr().out
    assert main(["tenants", "list"]) == 0
    acme = next(line for line in capsys.readouterr().out.splitlines() if "acme" in line)
    assert "50,80,100% · $25/day" in acme
    assert main(["tenants", "set", "acme", "--daily-spend-alert", "none"]) == 0
    assert "budget alerts 50,80,100%" in capsys.readouterr().out
    assert main(["keys", "alerts", "key_missing", "--alert-thresholds", "90"]) == 1
    assert main(["tenants", "set", "acme", "--alert-thresholds", "0"]) != 0


async def test_key_alerts_from_the_cli(
    engine: AsyncEngine, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, record = await create_api_key(engine, "acme")
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    code = await asyncio.to_thread(
        main, ["keys", "alerts", record.id, "--alert-thresholds", "90"])
    assert code == 0 and f"key {record.id}: budget alerts 90%" in capsys.readouterr().out
    rules = await alert_rules(engine, "acme")
    assert rules[f"key:{record.id}"].thresholds_pct == (90,)


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(IngressServices(
        settings=IngressSettings(admin_key=ADMIN),
        kafka=KafkaSettings(kafka_bootstrap="127.0.0.1:1"),
        config=demo_config(), api_keys=PostgresApiKeys(engine),
        requests=PostgresRequests(engine), webhooks=WebhookSettings(),
        batches=BatchSettings(), ledger=LedgerAccess(engine),
    ))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
        yield client


async def test_admin_api_tenant_alert_fields(client: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    response = await client.put("/v1/admin/tenants/acme", headers=admin, json={
        "monthly_budget_usd": "10", "alert_thresholds_pct": [80, 50],
        "daily_spend_alert_usd": "2.50"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["alert_thresholds_pct"] == [50, 80]
    assert body["daily_spend_alert_usd"] == "2.5"
    assert body["monthly_budget_usd"] == "10.0000000000"
    listing = (await client.get("/v1/admin/tenants", headers=admin)).json()["data"]
    assert listing[0]["alert_thresholds_pct"] == [50, 80]
    bad = await client.put("/v1/admin/tenants/acme", headers=admin,
                           json={"alert_thresholds_pct": [0]})
    assert bad.status_code == 400
    usage = (await client.get("/v1/usage", params={"tenant": "acme"}, headers=admin)).json()
    assert usage["alerts"] == {"rules": [{"scope": "tenant:acme", "thresholds_pct": [50, 80],
                                          "daily_usd": "2.5"}], "fired": []}
