"""The daily usage rollup (migration 0008) stays equal to the rows, and reports read it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.tables import usage_events
from broker.stores.usage import usage_report, whole_days
from tests.integration.test_ledger_spend import batch, usage
from workers.ledger import write_batch

pytestmark = pytest.mark.integration

CELL = "day, tenant, api_key_id, model, deployment, provider"
# The rollup as it must be: recomputed from the rows, first call by (finished_at, event_id).
EXPECTED = text(f"""
SELECT (date_trunc('day', finished_at AT TIME ZONE 'UTC'))::date AS day, tenant, api_key_id,
       model, deployment, provider, count(*) AS calls, count(*) FILTER (WHERE first) AS requests,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       coalesce(sum(cost_usd), 0) AS cost_usd, count(*) FILTER (WHERE cost_usd IS NULL)
           AS unpriced_calls
FROM (SELECT u.*, row_number() OVER (PARTITION BY request_id ORDER BY finished_at, event_id) = 1
                  AS first FROM usage_events u) AS s
GROUP BY 1, tenant, api_key_id, model, deployment, provider ORDER BY {CELL}
""")
ACTUAL = text(f"""
SELECT {CELL}, calls, requests, input_tokens, output_tokens, cost_usd, unpriced_calls
FROM usage_rollup WHERE calls > 0 OR requests <> 0 ORDER BY {CELL}
""")
DAY = datetime(2026, 3, 10, 12, tzinfo=UTC)



async def rows_of(engine: AsyncEngine, statement: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(statement)]


async def assert_rollup_exact(engine: AsyncEngine) -> None:
    expected = await rows_of(engine, EXPECTED)
    assert expected and await rows_of(engine, ACTUAL) == expected


async def test_the_rollup_follows_every_insert_once(engine: AsyncEngine) -> None:
    at = {"started_at": DAY, "finished_at": DAY}
    late = {"started_at": DAY - timedelta(hours=1), "finished_at": DAY - timedelta(hours=1)}
    first = [usage(1, **at), usage(2, request_id="req_shared", **at),
             usage(3, model="unpriced", **at), usage(4, api_key_id=None, **at)]
    assert await write_batch(engine, batch(*first)) == []
    await assert_rollup_exact(engine)
    # Redelivered events add nothing; a retry of req_shared on another deployment is a call,
    # not a request; one that finished earlier but arrives late takes the request over.
    assert await write_batch(engine, batch(*first, usage(
        5, request_id="req_shared", deployment="other", **at))) == []
    await assert_rollup_exact(engine)
    assert await write_batch(engine, batch(usage(6, request_id="req_shared", **late))) == []
    await assert_rollup_exact(engine)
    # The row-by-row path (a poison row in the batch) goes through the trigger too.
    poison = usage(7, tenant="bad\x00tenant")
    assert len(await write_batch(engine, batch(poison, usage(8, **at), usage(9)))) == 1
    await assert_rollup_exact(engine)
    requests = await rows_of(engine, text("SELECT sum(requests), sum(calls) FROM usage_rollup"))
    assert requests == [(6, 8)]  # req_1, req_3, req_4, req_8, req_9 and req_shared (3 calls)


async def test_rebuild_recomputes_after_a_correction(engine: AsyncEngine) -> None:
    assert await write_batch(engine, batch(*(usage(n) for n in range(20)))) == []
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM usage_events WHERE event_id = 'use_3'"))
        cells = await connection.scalar(text("SELECT sluice_usage_rollup_rebuild()"))
    assert cells == 1
    await assert_rollup_exact(engine)


def row(n: int, finished: datetime, **changes: Any) -> dict[str, Any]:
    return {
        "event_id": f"use_{n}", "request_id": f"req_{n}", "tenant": "acme",
        "api_key_id": f"key_{n % 3}", "model": f"m{n % 2}", "deployment": "sim",
        "provider": "openai", "input_tokens": n, "output_tokens": 2 * n,
        "cost_usd": Decimal(n) / 1000 if n % 5 else None, "latency_ms": 1.0,
        "status": "succeeded", "started_at": finished, "finished_at": finished,
    } | changes


def test_whole_days() -> None:
    assert whole_days(DAY, DAY + timedelta(days=1)) is None
    midnight = datetime(2026, 3, 11, tzinfo=UTC)
    assert whole_days(DAY, DAY + timedelta(days=2)) == (midnight, midnight + timedelta(days=1))
    assert whole_days(midnight, midnight + timedelta(days=1)) == (
        midnight, midnight + timedelta(days=1))
    # A range given in another zone is cut at UTC midnights.
    new_york = datetime(2026, 3, 10, 15, tzinfo=timezone(timedelta(hours=-5)))  # 20:00 UTC
    assert whole_days(new_york, new_york + timedelta(days=2)) == (
        midnight, midnight + timedelta(days=1))


@pytest.mark.parametrize("group_by", [(), ("tenant",), ("model", "day"), ("key", "model"),
                                      ("deployment",), ("hour",)])
async def test_reports_from_the_rollup_equal_reports_from_the_rows(
    engine: AsyncEngine, group_by: tuple[str, ...]
) -> None:
    # Six days of calls every 30 minutes, one of each request; a range that starts and ends
    # mid-day (partial days from the rows, whole days from the rollup).
    rows = [row(n, DAY + timedelta(minutes=30 * n)) for n in range(6 * 48)]
    async with engine.begin() as connection:
        await connection.execute(insert(usage_events), rows)
    start, end = DAY + timedelta(hours=5), DAY + timedelta(days=4, hours=7)
    report = await usage_report(engine, start=start, end=end, group_by=group_by)
    # The reference: every row in range, aggregated here.
    inside = [r for r in rows if start <= r["finished_at"] < end]
    assert sum(r["calls"] for r in report) == len(inside)
    assert sum(r["requests"] for r in report) == len(inside)
    assert sum(r["input_tokens"] for r in report) == sum(r["input_tokens"] for r in inside)
    priced = [r["cost_usd"] for r in inside if r["cost_usd"] is not None]
    assert sum(r["cost_usd"] or 0 for r in report) == sum(priced)
    assert sum(r["unpriced_calls"] for r in report) == len(inside) - len(priced)
    if group_by == ("model", "day"):
        assert [(r["model"], r["day"]) for r in report][:2] == [("m0", "2026-03-10"),
                                                                ("m0", "2026-03-11")]
        assert len(report) == 10  # two models, five days (two of them partial)


async def test_a_group_of_unpriced_calls_costs_null(engine: AsyncEngine) -> None:
    rows = [row(n, DAY + timedelta(days=n), model="free", cost_usd=None) for n in range(3)]
    rows.append(row(9, DAY, model="paid", cost_usd=Decimal("0.5")))
    async with engine.begin() as connection:
        await connection.execute(insert(usage_events), rows)
    report = await usage_report(engine, start=DAY - timedelta(days=1), end=DAY + timedelta(days=5),
                                group_by=["model"])
    assert [(r["model"], r["cost_usd"], r["unpriced_calls"]) for r in report] == [
        ("free", None, 3), ("paid", Decimal("0.5"), 0)]
    empty = await usage_report(engine, start=DAY + timedelta(days=30),
                               end=DAY + timedelta(days=35), group_by=[])
    assert empty == [{"calls": 0, "requests": 0, "input_tokens": 0, "output_tokens": 0,
                      "cost_usd": None, "unpriced_calls": 0}]


async def test_views_read_the_rollup(engine: AsyncEngine) -> None:
    rows = [row(n, DAY + timedelta(hours=7 * n)) for n in range(40)]
    async with engine.begin() as connection:
        await connection.execute(insert(usage_events), rows)
    daily = await rows_of(engine, text(
        "SELECT day, sum(calls), sum(requests), sum(input_tokens) FROM usage_daily "
        "GROUP BY day ORDER BY day"))
    assert sum(calls for _, calls, _, _ in daily) == 40
    assert daily[0][:2] == (DAY.date(), 2)  # 12:00 and 19:00 on the first day
    monthly = await rows_of(engine, text(
        "SELECT month, tenant, calls, input_tokens, cost_usd, unpriced_calls "
        "FROM spend_by_tenant_month ORDER BY month"))
    in_march = [r for r in rows if r["finished_at"].month == 3]
    priced = sum(r["cost_usd"] for r in in_march if r["cost_usd"] is not None)
    assert monthly[0] == (DAY.date().replace(day=1), "acme", len(in_march),
                          sum(r["input_tokens"] for r in in_march), priced,
                          sum(r["cost_usd"] is None for r in in_march))
