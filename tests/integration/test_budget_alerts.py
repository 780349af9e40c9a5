"""Budget alerts end to end: spend recorded by the ledger crosses a tenant's thresholds and
a signed `budget.threshold_crossed` webhook reaches the tenant's endpoint, once per
threshold and month.

Answers here are 2,000 tokens long and requests give no `max_tokens`, so admission holds
far less than each request costs (the deployment has no output cap): that lets spend pass
100% of the budget, which the 100% threshold needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from broker.settings import KafkaSettings
from broker.stores.admission import month_of
from broker.stores.budget_alerts import set_alert_rule, tenant_scope
from broker.stores.tenants import set_tenant
from broker.webhooks.settings import WebhookSettings
from broker.webhooks.store import register_endpoint, rotate_secret
from simulator import SimulatorSettings
from sluice.tenants_cli import run_tenants_list
from tests.integration.stack import Stack, eventually, running_stack
from tests.integration.webhook_receiver import Hit, Receiver, receiver
from workers.deliver import Deliverer
from workers.deliver.sender import WebhookSender, new_client

pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

FAST = WebhookSettings(
    webhook_allow_hosts="127.0.0.1", webhook_min_backoff_s=0.05, webhook_max_backoff_s=0.2,
    webhook_max_attempts=4, deliver_sweep_interval_s=0.2, webhook_timeout_s=5,
)
# 2,000 output tokens at $0.60 per million: $0.0012 and a little input per request.
BUDGET = Decimal("0.0045")


@asynccontextmanager
async def deliverer(kafka: KafkaSettings, stack: Stack) -> AsyncIterator[None]:
    stop = asyncio.Event()
    async with new_client(FAST) as client:
        task = asyncio.create_task(
            Deliverer(kafka, FAST, stack.engine, WebhookSender(client, FAST)).run(stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def _spent(stack: Stack) -> Decimal:
    value = await stack.scalar(
        "SELECT spent_usd FROM spend_accounts WHERE scope = 'tenant:acme' AND period = :p",
        p=month_of(datetime.now(UTC)))
    return Decimal(value or 0)


async def _ask_and_settle(stack: Stack) -> Decimal:
    """One chat completion through the SDK; wait until the ledger recorded its spend."""
    before = await _spent(stack)
    client = stack.openai()
    try:
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Write a saga."}])
    finally:
        await client.close()
    assert answer.usage is not None and answer.usage.completion_tokens == 2000

    async def grown() -> Decimal | None:
        spent = await _spent(stack)
        return spent if spent > before else None

    spent = await eventually(grown, 30)
    assert spent is not None
    return spent


async def _alerts(stack: Stack) -> list[tuple[str, str]]:
    async with stack.engine.connect() as connection:
        rows = (await connection.execute(text(
            "SELECT f.threshold, d.id FROM budget_alerts_fired f JOIN webhook_deliveries d "
            "ON d.request_id = 'budget_alert_' || f.id ORDER BY f.id"))).all()
    return [(row.threshold, row.id) for row in rows]


def _alert_hits(hooks: Receiver) -> list[Hit]:
    # The endpoint also receives every final result (`inference.succeeded`).
    return [hit for hit in hooks.at("/alerts")
            if json.loads(hit.body)["type"] == "budget.threshold_crossed"]


async def _received(hooks: Receiver, count: int) -> bool:
    return len(_alert_hits(hooks)) >= count


async def test_thresholds_fire_one_signed_webhook_each(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SLUICE_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")
    async with receiver() as hooks, running_stack(
        kafka_settings, database_url, simulator=SimulatorSettings(output_tokens=2000),
    ) as stack, deliverer(kafka_settings, stack):
        # What `POST /v1/webhooks/secrets` and `/endpoints` do (a tenant admin's calls).
        secret = (await rotate_secret(stack.engine, "acme", 0)).secret
        assert secret is not None
        await register_endpoint(stack.engine, "acme", hooks.url("/alerts"), None, limit=10)
        await set_tenant(stack.engine, "acme", monthly_budget_usd=BUDGET)
        await set_alert_rule(stack.engine, tenant_scope("acme"), "acme", thresholds_pct=[50, 100])

        assert await _ask_and_settle(stack) < BUDGET / 2
        assert await _alerts(stack) == []
        assert await _ask_and_settle(stack) >= BUDGET / 2  # crosses 50%
        [(threshold, delivery)] = await _alerts(stack)
        assert threshold == "50%"
        assert await _ask_and_settle(stack) < BUDGET  # more spend, still under 100%
        assert [t for t, _ in await _alerts(stack)] == ["50%"]  # not fired again

        await eventually(lambda: _received(hooks, 1), 30)
        [hit] = _alert_hits(hooks)
        assert hit.headers["webhook-id"] == delivery
        event: dict[str, Any] = Webhook(secret).verify(hit.body, hit.headers)
        assert event["type"] == "budget.threshold_crossed"
        data = event["data"]
        assert (data["tenant"], data["key"], data["threshold"], data["window"]) == (
            "acme", None, "50%", "month")
        assert data["period"] == f"{datetime.now(UTC):%Y-%m}"
        assert Decimal(data["budget_usd"]) == BUDGET
        assert BUDGET / 2 <= Decimal(data["spend_usd"]) < BUDGET

        assert await _ask_and_settle(stack) >= BUDGET  # crosses 100%
        assert [t for t, _ in await _alerts(stack)] == ["50%", "100%"]
        await eventually(lambda: _received(hooks, 2), 30)
        second_hit = _alert_hits(hooks)[1]
        second = Webhook(secret).verify(second_hit.body, second_hit.headers)
        assert second["data"]["threshold"] == "100%"

        usage = await stack.client.get("/v1/usage", headers=stack.auth)
        assert usage.status_code == 200, usage.text
        alerts = usage.json()["alerts"]
        assert alerts["rules"] == [{"scope": "tenant:acme", "thresholds_pct": [50, 100],
                                    "daily_usd": None}]
        assert [a["threshold"] for a in alerts["fired"]] == ["100%", "50%"]

        monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
        assert await asyncio.to_thread(run_tenants_list, argparse.Namespace()) == 0
        listed = capsys.readouterr().out
        acme = next(line for line in listed.splitlines() if "acme" in line)
        assert "50,100%" in acme and "100% at $" in acme
    assert len(_alert_hits(hooks)) == 2  # each alert delivered once
