"""The `response_cache` table: what the ledger keeps, what ingress reads, how hits are booked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.caching.index import vector_to_text
from broker.stores.response_cache import (
    CacheHit,
    find_answer,
    keep_answers,
    record_hits,
    vectors_since,
)
from schemas import ChatCompletion, InferenceResult, RequestStatus
from schemas.caching import CacheTicket
from schemas.guardrails import GuardrailDecision

pytestmark = pytest.mark.integration

KEY = "a" * 64
REST = "b" * 64


def result(request_id: str, *, tenant: str = "acme", key: str = KEY, ttl_s: float = 60,
           status: RequestStatus = RequestStatus.SUCCEEDED, vector: Any = None,
           finished: datetime | None = None, text_: str = "Paris.") -> InferenceResult:
    finished = finished or datetime.now(UTC)
    completion = ChatCompletion.model_validate({
        "id": "chatcmpl-1", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"message": {"role": "assistant", "content": text_}}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17}})
    ticket = CacheTicket(key=key, ttl_s=ttl_s,
                         rest_hash=REST if vector is not None else None,
                         embedding=vector_to_text(vector) if vector is not None else None)
    return InferenceResult(request_id=request_id, model="m", status=status,
                           completion=completion if status is RequestStatus.SUCCEEDED else None,
                           tenant=tenant, created_at=finished, finished_at=finished,
                           cache=ticket)


async def test_a_succeeded_answer_is_kept_once_and_read_only_by_its_tenant(
        engine: AsyncEngine) -> None:
    # The same key twice in one batch (two requests asked alike), then redelivered.
    assert await keep_answers(engine, [result("req_0"), result("req_1")]) == 1
    assert await keep_answers(engine, [result("req_1")]) == 1
    assert await keep_answers(engine, [result("req_2", status=RequestStatus.FAILED)]) == 0
    answer = await find_answer(engine, "acme", KEY)
    assert answer is not None and answer.request_id == "req_1"
    assert answer.completion["choices"][0]["message"]["content"] == "Paris."
    assert (answer.input_tokens, answer.output_tokens) == (14, 3)
    assert await find_answer(engine, "globex", KEY) is None
    # Another tenant naming the same key (a forged ticket) cannot replace the answer.
    await keep_answers(engine, [result("req_3", tenant="globex", ttl_s=600, text_="Lyon.")])
    answer = await find_answer(engine, "acme", KEY)
    assert answer is not None and answer.request_id == "req_1"
    async with engine.connect() as connection:
        assert (await connection.execute(text("select count(*) from response_cache"))).scalar() == 1


async def test_a_newer_answer_replaces_an_older_one_and_expired_ones_are_not_served(
        engine: AsyncEngine) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    await keep_answers(engine, [result("req_old", finished=long_ago)])
    assert await find_answer(engine, "acme", KEY) is None  # expired an hour ago
    await keep_answers(engine, [result("req_new")])
    answer = await find_answer(engine, "acme", KEY)
    assert answer is not None and answer.request_id == "req_new"
    # A late redelivery of the old result does not bring the old answer back.
    await keep_answers(engine, [result("req_old", finished=long_ago)])
    answer = await find_answer(engine, "acme", KEY)
    assert answer is not None and answer.request_id == "req_new"


async def test_vectors_are_read_per_scope_newest_last(engine: AsyncEngine) -> None:
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)
    await keep_answers(engine, [result("req_v1", key="1" * 64, vector=vector)])
    await keep_answers(engine, [result("req_v2", key="2" * 64, vector=-vector)])
    await keep_answers(engine, [result("req_x", key="3" * 64)])  # exact only: no vector
    rows = await vectors_since(engine, ("acme", "m", REST), None, 100)
    assert [row.key for row in rows] == ["1" * 64, "2" * 64]
    assert np.allclose(rows[0].vector, vector) and np.allclose(rows[1].vector, -vector)
    assert await vectors_since(engine, ("globex", "m", REST), None, 100) == []
    assert len(await vectors_since(engine, ("acme", "m", REST), None, 1)) == 1


async def test_a_hit_is_booked_as_a_free_call_with_the_tokens_it_saved(
        engine: AsyncEngine) -> None:
    await keep_answers(engine, [result("req_1")])
    answer = await find_answer(engine, "acme", KEY)
    assert answer is not None
    now = datetime.now(UTC)
    hit = CacheHit(request_id="req_hit", tenant="acme", api_key_id=None, answer=answer,
                   kind="hit", created_at=now, finished_at=now, latency_ms=0.4)
    await record_hits(engine, [hit])
    await record_hits(engine, [hit])  # idempotent by request id
    async with engine.connect() as connection:
        row = (await connection.execute(text(
            "select r.status, r.result->'completion'->>'id' as answer_id, u.provider, u.cache, "
            "u.cost_usd, u.input_tokens, u.saved_input_tokens, u.saved_output_tokens, "
            "u.provider_request_id from requests r join usage_events u on u.request_id = r.id "
            "where r.id = 'req_hit'"))).one()
        rollup = (await connection.execute(text(
            "select calls, input_tokens, cost_usd from usage_rollup where provider = 'cache'"
        ))).one()
    assert (row.status, row.answer_id, row.provider, row.cache) == (
        "succeeded", "req_hit", "cache", "hit")
    assert (row.cost_usd, row.input_tokens) == (0, 0)
    assert (row.saved_input_tokens, row.saved_output_tokens) == (14, 3)
    assert row.provider_request_id == "req_1"  # whose answer was replayed
    assert (rollup.calls, rollup.input_tokens, rollup.cost_usd) == (1, 0, 0)


async def test_an_answer_with_restored_personal_data_is_never_kept(engine: AsyncEngine) -> None:
    restored = result("req_pii").model_copy(update={"guardrails": [GuardrailDecision(
        policy="pii", rule="email", action="restored", stage="output")]})
    masked_only = result("req_masked", key="4" * 64).model_copy(update={"guardrails": [
        GuardrailDecision(policy="pii", rule="email", action="masked", stage="input")]})
    assert await keep_answers(engine, [restored, masked_only]) == 1
