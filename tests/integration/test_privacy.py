"""Privacy in the ledger: prompts only for opted-in tenants; others' answers only until polled.

Real Kafka and PostgreSQL. Tenants are opted in by inserting into `tenants` directly.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.kafka import topics_for
from broker.settings import KafkaSettings, LedgerSettings
from broker.stores.requests import get_request
from broker.stores.tables import requests, tenants
from ingress.rendering import request_state
from schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    CompletionMessage,
    InferenceRequest,
    RequestStatus,
    Usage,
)
from tests.integration.stack import eventually
from tests.integration.test_ledger import MODEL, NOW, produce, result, running_ledger
from workers.ledger import ContentRetention
from workers.ledger.content import OptedInTenants
from workers.ledger.retention import _SWEEP

pytestmark = pytest.mark.integration

ANSWER = "the confidential answer"



async def opt_in(engine: AsyncEngine, **flags: bool) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            insert(tenants), [{"name": name, "store_content": on} for name, on in flags.items()]
        )


def request(request_id: str, tenant: str, content: str = "my secret prompt") -> InferenceRequest:
    body = ChatCompletionRequest(model=MODEL, messages=[
        ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content=content)])
    return InferenceRequest(id=request_id, model=MODEL, body=body, tenant=tenant, created_at=NOW)


def answered(request_id: str, tenant: str) -> Any:
    completion = ChatCompletion(
        id=f"chatcmpl-{request_id}", created=1, model=MODEL,
        choices=[Choice(message=CompletionMessage(content=ANSWER))],
        usage=Usage(prompt_tokens=11, completion_tokens=4, total_tokens=15),
    )
    return result(request_id, RequestStatus.SUCCEEDED, tenant=tenant, completion=completion)


async def stored(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        return {row.id: row for row in await connection.execute(select(requests))}


def text_of(row: Any) -> str | None:
    message = row.result["completion"]["choices"][0]["message"]
    assert message["role"] == "assistant"
    content: str | None = message.get("content")
    return content


async def test_prompts_only_for_opted_in_tenants_and_others_text_only_until_retention(
    kafka_settings: KafkaSettings, engine: AsyncEngine
) -> None:
    await opt_in(engine, keep=True, acme=False)  # "anon" has no tenants row: the default
    topics = topics_for(kafka_settings)
    async with running_ledger(kafka_settings, engine):
        # The result of r_keep_late is recorded before its request is seen.
        await produce(kafka_settings, topics.results, answered("r_keep_late", "keep"))
        await eventually(lambda: get_request(engine, "r_keep_late"))
        await produce(kafka_settings, topics.requests(MODEL), *(
            request(request_id, tenant) for request_id, tenant in [
                ("r_keep", "keep"), ("r_keep_late", "keep"), ("r_acme", "acme"),
                ("r_anon", "anon")]),
            # PostgreSQL refuses NUL in jsonb: this prompt is skipped, nothing stalls.
            request("r_keep_nul", "keep", "nul \x00 here"))
        await produce(kafka_settings, topics.results, *(
            answered(request_id, tenant) for request_id, tenant in [
                ("r_keep", "keep"), ("r_acme", "acme"), ("r_anon", "anon"),
                ("r_keep_nul", "keep")]))

        async def all_recorded() -> bool:
            rows = await stored(engine)
            return len(rows) == 5 and all(
                row.status == "succeeded" and row.lane for row in rows.values()
            ) and rows["r_keep"].prompt is not None and rows["r_keep_late"].prompt is not None

        await eventually(all_recorded)
    rows = await stored(engine)
    # Nothing has swept yet: every answer is there to poll, whoever the tenant.
    assert {request_id: text_of(row) for request_id, row in rows.items()} == {
        request_id: ANSWER for request_id in rows}
    expected_prompt = [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": "my secret prompt"}]
    assert rows["r_keep"].prompt == expected_prompt
    assert rows["r_keep_late"].prompt == expected_prompt
    assert rows["r_acme"].prompt is None and rows["r_anon"].prompt is None
    assert rows["r_keep_nul"].prompt is None

    # The ledger's periodic sweep, with a retention of one second.
    retention = ContentRetention(engine, LedgerSettings(
        ledger_result_retention_s=1.0, ledger_purge_interval_s=0.1))
    stop = asyncio.Event()
    sweeping = asyncio.create_task(retention.run(stop))
    try:
        async def purged() -> bool:
            now = await stored(engine)
            return text_of(now["r_acme"]) is None and text_of(now["r_anon"]) is None

        await eventually(purged)
    finally:
        stop.set()
        await asyncio.wait_for(sweeping, 10)

    after = await stored(engine)
    for request_id in ("r_acme", "r_anon"):
        before, now = rows[request_id], after[request_id]
        # Metadata and counts stay; only the text went.
        assert (now.status, now.model, now.tenant, now.lane, now.created_at, now.finished_at) == (
            before.status, before.model, before.tenant, before.lane, before.created_at,
            before.finished_at)
        assert now.result["completion"]["usage"] == before.result["completion"]["usage"]
        assert now.result["completion"]["choices"][0]["finish_reason"] == "stop"
        assert ANSWER not in str(now.result) and now.prompt is None
    for request_id in ("r_keep", "r_keep_late"):
        assert text_of(after[request_id]) == ANSWER
        assert after[request_id].prompt == rows[request_id].prompt

    # Polling still answers: status and usage, the message without its text.
    record = await get_request(engine, "r_acme")
    assert record is not None
    state = request_state(record.id, record.status, record.model, record.created_at,
                          record.finished_at, record.result, "http://x/v1/requests/r_acme")
    assert state["status"] == "succeeded" and state["result"]["usage"]["total_tokens"] == 15
    assert state["result"]["choices"][0]["message"] == {"role": "assistant"}


async def _insert_rows(engine: AsyncEngine, tenant: str, count: int, age: timedelta) -> None:
    rows = []
    for index in range(count):
        request_id = f"{tenant}_{index}"
        rows.append({
            "id": request_id, "tenant": tenant, "model": MODEL, "lane": "interactive",
            "status": "succeeded", "prompt": [{"role": "user", "content": "p"}],
            "result": answered(request_id, tenant).model_dump(mode="json", exclude_none=True),
            "created_at": NOW, "finished_at": NOW,
        })
    async with engine.begin() as connection:
        await connection.execute(insert(requests), rows)
        await connection.execute(
            update(requests).where(requests.c.tenant == tenant)
            .values(updated_at=text("now() - make_interval(secs => :age)")),
            {"age": age.total_seconds()},
        )


async def test_sweep_goes_in_batches_through_the_partial_index(engine: AsyncEngine) -> None:
    await opt_in(engine, keep=True)
    await _insert_rows(engine, "acme", 5, timedelta(hours=2))
    await _insert_rows(engine, "keep", 3, timedelta(hours=2))
    await _insert_rows(engine, "fresh", 2, timedelta(seconds=0))  # not past retention yet
    retention = ContentRetention(
        engine, LedgerSettings(ledger_result_retention_s=60), batch_size=2)
    async with engine.connect() as connection:
        await connection.execute(text("SET enable_seqscan = off"))
        # The sweep's own statement, so the test breaks if its predicate drifts from the index.
        plan = "\n".join((await connection.execute(
            text("EXPLAIN " + str(_SWEEP)),
            {"floor": NOW - timedelta(days=9999), "cutoff": NOW, "limit": 2},
        )).scalars())
    assert "ix_requests_text_updated_at" in plan, plan

    assert await retention.sweep() == 5  # three batches of at most two
    rows = await stored(engine)
    assert all(text_of(rows[f"acme_{i}"]) is None and rows[f"acme_{i}"].prompt is None
               for i in range(5))
    assert all(text_of(rows[f"keep_{i}"]) == ANSWER for i in range(3))
    assert all(text_of(rows[f"fresh_{i}"]) == ANSWER for i in range(2))
    assert await retention.sweep() == 0


async def test_opting_out_makes_kept_text_due(engine: AsyncEngine) -> None:
    await opt_in(engine, keep=True)
    await _insert_rows(engine, "keep", 3, timedelta(hours=2))
    retention = ContentRetention(engine, LedgerSettings(ledger_result_retention_s=60))
    assert await retention.sweep() == 0
    assert await retention.sweep() == 0  # the next sweep starts past these rows
    async with engine.begin() as connection:
        await connection.execute(update(tenants).values(store_content=False))
    assert await retention.sweep() == 3
    rows = await stored(engine)
    assert all(row.prompt is None and text_of(row) is None for row in rows.values())


async def test_opted_in_tenants_are_cached_for_their_ttl(engine: AsyncEngine) -> None:
    now = [0.0]
    cache = OptedInTenants(engine, ttl_s=30, clock=lambda: now[0])
    assert await cache.names() == frozenset()
    await opt_in(engine, keep=True, acme=False)
    now[0] += 29
    assert await cache.names() == frozenset()  # cached: the opt-in is not seen yet
    now[0] += 2
    assert await cache.names() == frozenset({"keep"})
