"""One feedback entry per (request, caller) on real PostgreSQL: a repeated post replaces,
reports count requests once with the mean of their callers' scores (migration 0024)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.feedback.store import feedback_report, record_feedback
from broker.stores.tenants import set_tenant

pytestmark = pytest.mark.integration

START, END = datetime(2020, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


async def _post(engine: AsyncEngine, request_id: str, key: str, score: float,
                **more: Any) -> Any:
    return await record_feedback(engine, tenant="acme", api_key_id=key, request_id=request_id,
                                 score=score, label=more.pop("label", None),
                                 comment=more.pop("comment", None), **more)


async def _rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql))).all())


async def test_a_callers_new_post_replaces_its_earlier_one(engine: AsyncEngine) -> None:
    await set_tenant(engine, "acme", store_content=True)
    first = await _post(engine, "req_1", "key_a", 1, label="good", comment="Nice.")
    assert not first.replaced
    retried = await _post(engine, "req_1", "key_a", 1, label="good", comment="Nice.")
    assert (retried.id, retried.replaced, retried.score) == (first.id, True, 1)
    changed = await _post(engine, "req_1", "key_a", -1, batch_id="batch_1", custom_id="q1")
    assert (changed.id, changed.replaced) == (first.id, True)
    # The latest post wins whole: no label or comment left over from the earlier one.
    assert (changed.score, changed.label, changed.comment) == (-1, None, None)
    assert (changed.batch_id, changed.custom_id) == ("batch_1", "q1")
    other_caller = await _post(engine, "req_1", "key_b", 0.5)
    assert other_caller.id != first.id and not other_caller.replaced

    rows = await _rows(engine, "SELECT api_key_id, score FROM feedback ORDER BY api_key_id")
    assert [(row.api_key_id, row.score) for row in rows] == [("key_a", -1), ("key_b", 0.5)]


async def test_concurrent_identical_posts_leave_one_entry(engine: AsyncEngine) -> None:
    entries = await asyncio.gather(*(_post(engine, "req_1", "key_a", 1) for _ in range(8)))
    assert len({entry.id for entry in entries}) == 1
    assert sum(not entry.replaced for entry in entries) == 1
    assert await _rows(engine, "SELECT count(*) FROM feedback") == [(1,)]


async def test_reports_count_requests_with_their_callers_mean(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(
            "INSERT INTO requests (id, tenant, model, status, variant, created_at) "
            "SELECT id, 'acme', 'ab', 'succeeded', variant, now() FROM (VALUES "
            "('req_a1', 'a'), ('req_a2', 'a'), ('req_b1', 'b')) AS r(id, variant)"))
    # Variant a: a request retried five times at 1 by one caller, and rated by two callers
    # (1 and 0: 0.5), plus a request at -1. Counting posts would say 8 at 0.5.
    for _ in range(5):
        await _post(engine, "req_a1", "key_a", 1)
    await _post(engine, "req_a1", "key_b", 0)
    await _post(engine, "req_a2", "key_a", 0.5)
    await _post(engine, "req_a2", "key_a", -1)  # a change of mind
    await _post(engine, "req_b1", "key_a", 0.25)

    report = await feedback_report(engine, start=START, end=END, group_by=("variant",))
    assert report == [
        {"variant": "a", "feedback_count": 2, "feedback_mean_score": (0.5 - 1) / 2},
        {"variant": "b", "feedback_count": 1, "feedback_mean_score": 0.25},
    ]
    assert await feedback_report(engine, start=START, end=END, group_by=(),
                                 tenant="acme") == [
        {"feedback_count": 3, "feedback_mean_score": (0.5 - 1 + 0.25) / 3}]
    view = await _rows(engine, "SELECT variant, feedback_count, mean_score "
                               "FROM feedback_by_variant ORDER BY variant")
    assert [tuple(row) for row in view] == [("a", 2, -0.25), ("b", 1, 0.25)]
