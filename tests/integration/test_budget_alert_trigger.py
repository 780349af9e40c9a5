"""Budget alerts on real PostgreSQL: spend the ledger adds (`sluice_usage_add`) fires each
threshold once per scope and period, into the webhook outbox."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.budget_alerts import (
    alerts_section,
    key_scope,
    last_alerts,
    set_alert_rule,
    tenant_scope,
)
from broker.stores.keys import KeyLimits, create_api_key
from broker.stores.tenants import set_tenant
from broker.webhooks.store import register_endpoint

pytestmark = pytest.mark.integration

DECEMBER, JANUARY = date(2026, 12, 1), date(2027, 1, 1)


async def _spend(engine: AsyncEngine, scope: str, usd: str, period: date = DECEMBER,
                 day: date | None = None) -> None:
    """What the ledger does for a batch of new usage rows (spent on `day` of the month)."""
    async with engine.begin() as connection:
        await connection.execute(text(
            "SELECT sluice_usage_add(ARRAY[:scope], ARRAY[CAST(:period AS date)], "
            "ARRAY[CAST(:usd AS numeric)], ARRAY[1::bigint], ARRAY[:scope], "
            "ARRAY[CAST(:day AS date)], ARRAY[CAST(:usd AS numeric)])"),
            {"scope": scope, "period": period, "usd": usd, "day": day or period})


async def _rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql))).all())


async def _fired(engine: AsyncEngine) -> list[tuple[str, str, date]]:
    rows = await _rows(engine, "SELECT scope, threshold, period FROM budget_alerts_fired "
                               "ORDER BY id")
    return [(row.scope, row.threshold, row.period) for row in rows]


async def test_each_threshold_fires_once_per_month(engine: AsyncEngine) -> None:
    await set_tenant(engine, "acme", monthly_budget_usd=Decimal(10))
    await set_alert_rule(engine, tenant_scope("acme"), "acme", thresholds_pct=[50, 80, 100])
    await register_endpoint(engine, "acme", "https://hooks.example/a", None, limit=10)
    await register_endpoint(engine, "acme", "https://hooks.example/b", None, limit=10)

    await _spend(engine, "tenant:acme", "4.99")
    assert await _fired(engine) == []
    await _spend(engine, "tenant:acme", "0.01")  # exactly 50%
    await _spend(engine, "tenant:acme", "1")  # 60%: nothing new
    assert await _fired(engine) == [("tenant:acme", "50%", DECEMBER)]
    await _spend(engine, "tenant:acme", "5")  # 110%: 80% and 100% in one batch
    await _spend(engine, "tenant:acme", "5")
    assert [t for _, t, _ in await _fired(engine)] == ["50%", "80%", "100%"]
    await _spend(engine, "tenant:acme", "6", JANUARY)  # a new month starts again
    assert (await _fired(engine))[-1] == ("tenant:acme", "50%", JANUARY)
    last = await last_alerts(engine)  # what `sluice tenants list` shows
    assert (last["tenant:acme"].threshold, last["tenant:acme"].period) == ("50%", JANUARY)

    deliveries = await _rows(engine, "SELECT url, event_type, payload, attempt_limit "
                                     "FROM webhook_deliveries ORDER BY created_at, url")
    assert len(deliveries) == 4 * 2  # every alert to both endpoints
    assert {row.event_type for row in deliveries} == {"budget.threshold_crossed"}
    first = json.loads(deliveries[0].payload)
    assert first["type"] == "budget.threshold_crossed"
    assert first["data"] == {
        "alert_id": first["data"]["alert_id"], "tenant": "acme", "key": None,
        "scope": "tenant:acme", "threshold": "50%", "window": "month", "period": "2026-12",
        "spend_usd": "5", "budget_usd": "10"}


async def test_key_thresholds_use_the_keys_budget(engine: AsyncEngine) -> None:
    _, record = await create_api_key(engine, "acme",
                                     limits=KeyLimits(monthly_budget_usd=Decimal(2)))
    await set_alert_rule(engine, key_scope(record.id), "acme", thresholds_pct=[50])
    await _spend(engine, f"key:{record.id}", "1")
    await _spend(engine, "tenant:acme", "100")  # the tenant has no rule
    assert await _fired(engine) == [(f"key:{record.id}", "50%", DECEMBER)]
    # No endpoint: the alert is recorded (and shown) but nothing is queued.
    assert await _rows(engine, "SELECT id FROM webhook_deliveries") == []
    section = await alerts_section(engine, "acme")
    assert section["rules"] == [{"scope": f"key:{record.id}", "thresholds_pct": [50],
                                 "daily_usd": None}]
    assert section["fired"][0]["key"] == record.id


async def test_daily_spend_alert_fires_once_a_day(engine: AsyncEngine) -> None:
    await set_alert_rule(engine, tenant_scope("daily"), "daily", daily_usd=Decimal("2.5"))
    day = date(2026, 12, 5)
    await _spend(engine, "tenant:daily", "2", day=day)
    assert await _fired(engine) == []
    await _spend(engine, "tenant:daily", "0.5", day=day)
    await _spend(engine, "tenant:daily", "3", day=day)
    assert await _fired(engine) == [("tenant:daily", "daily", day)]
    [row] = await _rows(engine, "SELECT spent_usd FROM budget_daily_spend")
    assert row.spent_usd == Decimal("5.5")


async def test_admission_holds_never_run_the_check(engine: AsyncEngine) -> None:
    await set_tenant(engine, "held", monthly_budget_usd=Decimal(1))
    await set_alert_rule(engine, tenant_scope("held"), "held", thresholds_pct=[1])
    async with engine.begin() as connection:  # what admission does: reserve, never spend
        await connection.execute(text(
            "INSERT INTO spend_accounts (scope, period, reserved_usd) "
            "VALUES ('tenant:held', :p, 5)"), {"p": DECEMBER})
        await connection.execute(text(
            "UPDATE spend_accounts SET reserved_usd = 9 WHERE scope = 'tenant:held'"))
    assert await _fired(engine) == []
    await _spend(engine, "tenant:held", "0.01")
    assert await _fired(engine) == [("tenant:held", "1%", DECEMBER)]


async def test_a_rule_with_nothing_left_is_removed(engine: AsyncEngine) -> None:
    await set_alert_rule(engine, tenant_scope("gone"), "gone", thresholds_pct=[50],
                         daily_usd=Decimal(1))
    await set_alert_rule(engine, tenant_scope("gone"), "gone", thresholds_pct=[])
    assert len(await _rows(engine, "SELECT 1 FROM budget_alert_rules")) == 1
    await set_alert_rule(engine, tenant_scope("gone"), "gone", daily_usd=None)
    assert await _rows(engine, "SELECT 1 FROM budget_alert_rules") == []
