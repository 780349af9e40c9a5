"""The ledger settles budgets: spend accounts sum the recorded usage, holds end once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.tables import spend_accounts, spend_holds, usage_events
from schemas import FINAL_STATUSES, InferenceResult, RequestStatus, UsageEvent
from workers.ledger import Kind, LedgerBatch, LedgerRow, write_batch
from workers.ledger.rows import Record, result_row, usage_row

pytestmark = pytest.mark.integration

JAN = datetime(2026, 1, 20, 12, tzinfo=UTC)
# 23:30 on Jan 31 in New York is Feb 1 in UTC: the month of a charge is the UTC month.
LATE_JAN_NEW_YORK = datetime(2026, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
PRICED = "gpt-4o-mini"  # in the shipped catalog: $0.15 / $0.60 per million tokens

# Every account's spend, recomputed from the rows themselves.
SUMS = text("""
SELECT scope, period, sum(usd) AS usd, sum(tokens) AS tokens FROM (
    SELECT 'tenant:' || tenant AS scope, api_key_id, finished_at, cost_usd,
           input_tokens, output_tokens FROM usage_events
    UNION ALL
    SELECT 'key:' || api_key_id, api_key_id, finished_at, cost_usd,
           input_tokens, output_tokens FROM usage_events WHERE api_key_id IS NOT NULL
) AS u, LATERAL (SELECT (date_trunc('month', finished_at AT TIME ZONE 'UTC'))::date AS period,
                        coalesce(cost_usd, 0) AS usd,
                        input_tokens::bigint + output_tokens AS tokens) AS c
GROUP BY scope, period ORDER BY scope, period
""")



def _record(topic: str) -> Record:
    return ConsumerRecord(topic, 0, 0, 0, 0, b"k", b"{}", None, 1, 2, ())


def usage(n: int, **changes: Any) -> LedgerRow:
    values: dict[str, Any] = {
        "event_id": f"use_{n}",
        "request_id": f"req_{n}",
        "tenant": "acme",
        "api_key_id": "key_a",
        "model": PRICED,
        "deployment": "sim",
        "provider": "openai",
        "input_tokens": 1000 + n,
        "output_tokens": 100 * n,
        "cost_usd": None,
        "latency_ms": 5.0,
        "status": "succeeded",
        "started_at": JAN + timedelta(minutes=n),
        "finished_at": JAN + timedelta(minutes=n),
    }
    event = UsageEvent(**(values | changes))
    return LedgerRow(Kind.USAGE, event.event_id, usage_row(event), _record("usage"))


def final(request_id: str, status: RequestStatus = RequestStatus.SUCCEEDED) -> LedgerRow:
    assert status in FINAL_STATUSES
    result = InferenceResult(request_id=request_id, model=PRICED, status=status, tenant="acme",
                             api_key_id="key_a", created_at=JAN, finished_at=JAN)
    return LedgerRow(Kind.RESULT, request_id, result_row(result), _record("results"))


def batch(*rows: LedgerRow) -> LedgerBatch:
    planned = LedgerBatch()
    for row in rows:
        planned.rows[row.kind].append(row)
    return planned


async def accounts(engine: AsyncEngine) -> dict[tuple[str, date], tuple[Decimal, int, Decimal,
                                                                        int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(spend_accounts))
    return {(r.scope, r.period): (r.spent_usd, r.spent_tokens, r.reserved_usd, r.reserved_tokens)
            for r in rows}


async def recomputed(engine: AsyncEngine) -> dict[tuple[str, date], tuple[Decimal, int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(SUMS)
    return {(r.scope, r.period): (r.usd, int(r.tokens)) for r in rows}


async def spent(engine: AsyncEngine) -> dict[tuple[str, date], tuple[Decimal, int]]:
    return {key: (usd, tokens) for key, (usd, tokens, _, _) in (await accounts(engine)).items()}


async def test_spend_accounts_sum_new_usage_rows_through_redelivery_and_poison(
    engine: AsyncEngine,
) -> None:
    first = [
        usage(1),
        usage(2, tenant="globex", api_key_id="key_g"),
        usage(3, api_key_id=None),  # no key: the tenant pays, no key account
        usage(4, finished_at=LATE_JAN_NEW_YORK, started_at=LATE_JAN_NEW_YORK),  # February
        usage(5, model="unpriced", cost_usd=Decimal("0.25")),  # the worker's estimate stands
        usage(6, model="unpriced"),  # no price at all: no dollars, but the tokens count
    ]
    assert await write_batch(engine, batch(*first)) == []
    after_first = await spent(engine)
    assert after_first == await recomputed(engine)
    feb, jan = date(2026, 2, 1), date(2026, 1, 1)
    assert after_first[("tenant:acme", feb)] == (Decimal("0.0003906"), 1404)
    assert ("key:None", jan) not in after_first and ("tenant:globex", jan) in after_first
    # tenant:acme in January: rows 1, 3, 5, 6 (row 4 is February's).
    assert after_first[("tenant:acme", jan)][1] == sum(1000 + n + 100 * n for n in (1, 3, 5, 6))

    # Redelivery: the same batch again, then a batch mixing old and new events.
    assert await write_batch(engine, batch(*first)) == []
    assert await spent(engine) == after_first
    assert await write_batch(engine, batch(first[0], first[1], usage(7), usage(8))) == []
    after_second = await spent(engine)
    assert after_second == await recomputed(engine)
    assert after_second[("key:key_a", jan)][1] == (
        after_first[("key:key_a", jan)][1] + (1000 + 7 + 700) + (1000 + 8 + 800))

    # A poison row sends the batch down the row-by-row path; the others still count once.
    poison = usage(9, tenant="bad\x00tenant")
    refused = await write_batch(engine, batch(first[2], poison, usage(10), usage(7)))
    assert [row.record for row in [poison]] == [p.record for p in refused]
    assert "refused by PostgreSQL" in refused[0].reason
    after_third = await spent(engine)
    assert after_third == await recomputed(engine)
    assert after_third[("tenant:acme", jan)][1] == after_second[("tenant:acme", jan)][1] + 2010
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(usage_events)) == 9


async def test_concurrent_redelivery_is_charged_once(engine: AsyncEngine) -> None:
    rows = [usage(n) for n in range(50)]
    results = await asyncio.gather(*(write_batch(engine, batch(*rows)) for _ in range(3)))
    assert results == [[], [], []]
    totals = await spent(engine)
    assert totals == await recomputed(engine)
    assert totals[("tenant:acme", date(2026, 1, 1))][1] == sum(1000 + 101 * n for n in range(50))


async def admit(engine: AsyncEngine, request_id: str, usd: str, tokens: int) -> None:
    async with engine.begin() as connection:
        admitted = await connection.scalar(text(
            "SELECT admitted FROM sluice_admit(:id, NULL, 0, 0, 60, "
            "CAST(:scopes AS TEXT[]), CAST(:limits AS NUMERIC[]), CAST(:limits AS NUMERIC[]), "
            "CAST(:period AS DATE), CAST(:usd AS NUMERIC), CAST(:tokens AS BIGINT))"
        ), {"id": request_id, "scopes": ["key:key_a", "tenant:acme"], "limits": [None, None],
            "period": date(2026, 1, 1), "usd": Decimal(usd), "tokens": tokens})
    assert admitted is True


async def holds(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set((await connection.execute(select(spend_holds.c.request_id))).scalars())


async def test_a_final_result_releases_its_hold_exactly_once(engine: AsyncEngine) -> None:
    jan = date(2026, 1, 1)
    await admit(engine, "req_1", "0.50", 1000)
    await admit(engine, "req_2", "0.25", 300)  # still running: its hold must stay
    await admit(engine, "req_3", "0.125", 70)
    reserved = {scope: value[2:] for (scope, _), value in (await accounts(engine)).items()}
    assert reserved == {"key:key_a": (Decimal("0.875"), 1370),
                        "tenant:acme": (Decimal("0.875"), 1370)}

    settled = batch(usage(1), final("req_1"))
    assert await write_batch(engine, settled) == []
    after = await accounts(engine)
    for scope in ("key:key_a", "tenant:acme"):
        assert after[(scope, jan)][2:] == (Decimal("0.375"), 370)
        assert after[(scope, jan)][1] == 1101  # the usage of the same batch is spent
    assert await holds(engine) == {"req_2", "req_3"}

    # The final result redelivered (alone, and with usage) releases nothing more.
    assert await write_batch(engine, batch(final("req_1"))) == []
    assert await write_batch(engine, settled) == []
    assert await accounts(engine) == after

    # Through the row-by-row path (a poison row in the batch) the release still happens once.
    poison = usage(9, tenant="bad\x00tenant")
    refused = await write_batch(engine, batch(poison, final("req_3", RequestStatus.EXPIRED),
                                              final("req_1")))
    assert len(refused) == 1
    for scope in ("key:key_a", "tenant:acme"):
        assert (await accounts(engine))[(scope, jan)][2:] == (Decimal("0.25"), 300)
    assert await holds(engine) == {"req_2"}


async def test_result_without_a_hold_releases_nothing(engine: AsyncEngine) -> None:
    await admit(engine, "req_held", "0.5", 10)
    before = await accounts(engine)
    unknown = f"req_{uuid.uuid4().hex[:8]}"  # e.g. a request admitted before budgets existed
    assert await write_batch(engine, batch(usage(1, request_id=unknown), final(unknown))) == []
    after = await accounts(engine)
    assert {key: value[2:] for key, value in after.items()} == {
        key: value[2:] for key, value in before.items()}
    assert await holds(engine) == {"req_held"}


async def test_a_succeeded_request_holds_until_its_usage_is_on_the_books(
    engine: AsyncEngine,
) -> None:
    """Result and usage come on different topics, in either order: the hold must last
    until both are recorded, or for a moment neither counts against the budget."""
    jan = date(2026, 1, 1)
    await admit(engine, "req_4", "0.50", 1000)
    await admit(engine, "req_5", "0.50", 1000)
    # Result first, usage later (a later poll).
    assert await write_batch(engine, batch(final("req_4"))) == []
    assert await holds(engine) == {"req_4", "req_5"}
    assert await write_batch(engine, batch(usage(4))) == []
    assert await holds(engine) == {"req_5"}
    # Usage first, result later.
    assert await write_batch(engine, batch(usage(5))) == []
    assert await holds(engine) == {"req_5"}
    assert await write_batch(engine, batch(final("req_5"))) == []
    assert await holds(engine) == set()
    for scope in ("key:key_a", "tenant:acme"):
        _, spent_tokens, reserved_usd, reserved_tokens = (
            await accounts(engine))[(scope, jan)]
        assert (reserved_usd, reserved_tokens) == (Decimal(0), 0)
        assert spent_tokens == (1004 + 400) + (1005 + 500)
    # A request that ends without succeeding releases at once (no usage may ever come).
    await admit(engine, "req_6", "0.50", 1000)
    assert await write_batch(engine, batch(final("req_6", RequestStatus.FAILED))) == []
    assert await holds(engine) == set()
