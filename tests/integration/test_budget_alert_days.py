"""Budget alerts on real PostgreSQL, through the ledger's own writes: a daily alert counts
the UTC day the spend happened in (not the day the ledger got to it), and a budget raised
mid-month alerts again at its new amount (migration 0024)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.budget_alerts import set_alert_rule, tenant_scope
from broker.stores.tenants import set_tenant
from broker.webhooks.store import register_endpoint
from schemas import UsageEvent
from workers.ledger import Kind, LedgerBatch, LedgerRow, write_batch
from workers.ledger.rows import usage_row

pytestmark = pytest.mark.integration

# Long past, so "the day the ledger runs" is never one of these days.
JAN_20, JAN_21 = date(2026, 1, 20), date(2026, 1, 21)
BEFORE_MIDNIGHT = datetime(2026, 1, 20, 23, 50, tzinfo=UTC)


def _usage(n: int, usd: str, finished_at: datetime) -> LedgerRow:
    event = UsageEvent(
        event_id=f"use_{n}", request_id=f"req_{n}", tenant="acme", api_key_id="key_a",
        model="unpriced",  # no catalog price: the worker's `cost_usd` stands
        deployment="sim", provider="openai", input_tokens=10, output_tokens=10,
        cost_usd=Decimal(usd), latency_ms=5.0, status="succeeded",
        started_at=finished_at, finished_at=finished_at)
    record = ConsumerRecord("usage", 0, n, 0, 0, b"k", b"{}", None, 1, 2, ())
    return LedgerRow(Kind.USAGE, event.event_id, usage_row(event), record)


def _batch(*rows: LedgerRow) -> LedgerBatch:
    planned = LedgerBatch()
    for row in rows:
        planned.rows[row.kind].append(row)
    return planned


async def _rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql))).all())


async def _fired(engine: AsyncEngine) -> list[tuple[str, date, Decimal, Decimal]]:
    rows = await _rows(engine, "SELECT threshold, period, spend_usd, budget_usd "
                               "FROM budget_alerts_fired ORDER BY id")
    return [(row.threshold, row.period, row.spend_usd, row.budget_usd) for row in rows]


async def test_daily_alert_counts_the_day_the_spend_happened(engine: AsyncEngine) -> None:
    await set_alert_rule(engine, tenant_scope("acme"), "acme", daily_usd=Decimal(1))
    await register_endpoint(engine, "acme", "https://hooks.example/a", None, limit=10)

    # A ledger catching up after an outage: $0.60 spent on each side of midnight. Counted
    # by the day the ledger ran, that is $1.20 in one day and an alert; by when it was
    # spent, neither day reached $1.
    late_evening = _usage(1, "0.6", BEFORE_MIDNIGHT)
    after_midnight = _usage(2, "0.6", BEFORE_MIDNIGHT + timedelta(minutes=20))
    assert await write_batch(engine, _batch(late_evening, after_midnight)) == []
    assert await _fired(engine) == []

    # More of the 20th's spend, recorded late: the 20th reaches its amount, and the alert
    # names the 20th.
    also_late_evening = _usage(3, "0.5", BEFORE_MIDNIGHT + timedelta(minutes=5))
    assert await write_batch(engine, _batch(also_late_evening)) == []
    assert await _fired(engine) == [("daily", JAN_20, Decimal("1.1"), Decimal(1))]
    [delivery] = await _rows(engine, "SELECT payload FROM webhook_deliveries")
    assert json.loads(delivery.payload)["data"]["period"] == "2026-01-20"

    # Redelivered events add nothing to any day, and nothing fires twice.
    assert await write_batch(engine, _batch(late_evening, after_midnight,
                                            also_late_evening)) == []
    days = await _rows(engine, "SELECT scope, day, spent_usd FROM budget_daily_spend "
                               "ORDER BY scope, day")
    # The key has no rule: its days are not kept.
    assert [(r.scope, r.day, r.spent_usd) for r in days] == [
        ("tenant:acme", JAN_20, Decimal("1.1")), ("tenant:acme", JAN_21, Decimal("0.6"))]
    assert len(await _fired(engine)) == 1
    assert len(await _rows(engine, "SELECT 1 FROM webhook_deliveries")) == 1


async def test_a_raised_budget_alerts_again_at_its_new_amount(engine: AsyncEngine) -> None:
    await set_tenant(engine, "acme", monthly_budget_usd=Decimal(10))
    await set_alert_rule(engine, tenant_scope("acme"), "acme", thresholds_pct=[100])
    await write_batch(engine, _batch(_usage(1, "10", BEFORE_MIDNIGHT)))
    assert await _fired(engine) == [("100%", date(2026, 1, 1), Decimal(10), Decimal(10))]

    await set_tenant(engine, "acme", monthly_budget_usd=Decimal(50))
    await write_batch(engine, _batch(_usage(2, "30", BEFORE_MIDNIGHT)))  # $40 of $50
    assert len(await _fired(engine)) == 1
    await write_batch(engine, _batch(_usage(3, "11", BEFORE_MIDNIGHT)))  # $51 of $50
    await write_batch(engine, _batch(_usage(4, "5", BEFORE_MIDNIGHT)))  # still once
    assert (await _fired(engine))[1:] == [("100%", date(2026, 1, 1), Decimal(51), Decimal(50))]

    # Back to $10: that amount's 100% has fired this month already.
    await set_tenant(engine, "acme", monthly_budget_usd=Decimal(10))
    await write_batch(engine, _batch(_usage(5, "1", BEFORE_MIDNIGHT)))
    assert len(await _fired(engine)) == 2
