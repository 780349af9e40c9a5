"""The ledger against real Kafka and PostgreSQL: each effect once, nothing lost, no stalls."""

from __future__ import annotations

import asyncio
import importlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from broker.kafka import (
    DLQ_REASON,
    DLQ_TOPIC,
    commit_positions,
    encode,
    ensure_topics,
    first_offsets,
    header,
    new_consumer,
    new_producer,
    topics_for,
)
from broker.settings import DatabaseSettings, KafkaSettings, LedgerSettings
from broker.stores.database import create_engine
from broker.stores.requests import get_request
from broker.stores.tables import requests, usage_events
from schemas import (
    ChatCompletionRequest,
    ChatMessage,
    ErrorInfo,
    InferenceRequest,
    InferenceResult,
    Lane,
    RequestStatus,
    Topics,
    UsageEvent,
)
from tests.integration.stack import eventually
from workers.ledger import (
    Kind,
    Ledger,
    plan_batch,
    subscription_pattern,
)
from workers.ledger.rows import Record
from workers.ledger.store import pair_answered, write_batch

pytestmark = [pytest.mark.integration, pytest.mark.dev_broker]

T = TypeVar("T")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
MODEL = "gpt-4o-mini"



def usage(event_id: str | None = None, **changes: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "event_id": event_id or f"use_{uuid.uuid4().hex}",
        "request_id": f"req_{uuid.uuid4().hex[:8]}",
        "tenant": "acme",
        "model": MODEL,
        "deployment": "sim",
        "provider": "openai",
        "provider_request_id": "chatcmpl-1",
        "input_tokens": 12,
        "output_tokens": 34,
        "cost_usd": Decimal("0.0000222"),
        "latency_ms": 12.5,
        "status": "succeeded",
        "started_at": NOW,
        "finished_at": NOW + timedelta(milliseconds=12),
    }
    return UsageEvent(**(values | changes))


def request(request_id: str, lane: Lane = Lane.INTERACTIVE) -> InferenceRequest:
    body = ChatCompletionRequest(model=MODEL, messages=[ChatMessage(role="user", content="hi")])
    return InferenceRequest(
        id=request_id, model=MODEL, body=body, tenant="acme", lane=lane, created_at=NOW
    )


def result(request_id: str, status: RequestStatus, **changes: Any) -> InferenceResult:
    error = None
    if status is not RequestStatus.SUCCEEDED:
        error = ErrorInfo(type="server_error", message=f"{status.value} in test")
    values: dict[str, Any] = {
        "request_id": request_id,
        "model": MODEL,
        "status": status,
        "error": error,
        "tenant": "acme",
        "deployment": "sim",
        "created_at": NOW,
        "finished_at": NOW + timedelta(seconds=1),
    }
    return InferenceResult(**(values | changes))


async def produce(kafka: KafkaSettings, topic: str, *messages: BaseModel | bytes) -> None:
    await ensure_topics(kafka, [topic])
    producer = new_producer(kafka, client_id="test")
    await producer.start()
    try:
        for message in messages:
            value = message if isinstance(message, bytes) else encode(message)
            await producer.send_and_wait(topic, value=value, key=b"k")
    finally:
        await producer.stop()


@asynccontextmanager
async def running_ledger(kafka: KafkaSettings, engine: AsyncEngine) -> AsyncIterator[Ledger]:
    settings = LedgerSettings(ledger_batch_size=500, ledger_flush_interval_s=0.02)
    ledger = Ledger(kafka, settings, engine, min_backoff_s=0.05, max_backoff_s=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(ledger.run(stop))
    try:
        yield ledger
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def _equals(value: Awaitable[T], expected: T) -> bool:
    return await value == expected


async def usage_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(usage_events)) or 0)


async def committed(kafka: KafkaSettings, group_id: str, topic: str) -> int:
    """Sum of the group's committed positions over `topic`'s partitions (without joining)."""
    consumer = new_consumer(kafka, client_id="test-offsets", group_id=group_id)
    await consumer.start()
    try:
        positions = [
            await consumer.committed(TopicPartition(topic, partition))
            for partition in range(kafka.topic_partitions)
        ]
    finally:
        await consumer.stop()
    return sum(position or 0 for position in positions)


async def test_duplicate_usage_event_is_one_row(
    kafka_settings: KafkaSettings, engine: AsyncEngine
) -> None:
    topics = topics_for(kafka_settings)
    event = usage("use_once")
    async with running_ledger(kafka_settings, engine):
        await produce(kafka_settings, topics.usage, event, event)
        await eventually(lambda: usage_count(engine))
        await produce(kafka_settings, topics.usage, event, usage("use_other"))
        await eventually(lambda: _equals(usage_count(engine), 2))
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(usage_events).where(usage_events.c.event_id == "use_once")
            )
        ).one()
    assert row.cost_usd == Decimal("0.0000222")
    assert (row.input_tokens, row.output_tokens, row.provider_request_id) == (12, 34, "chatcmpl-1")
    assert row.finished_at == event.finished_at and row.recorded_at is not None


async def test_request_then_result_in_either_order(
    kafka_settings: KafkaSettings, engine: AsyncEngine
) -> None:
    topics = topics_for(kafka_settings)
    first, second = "req_request_first", "req_result_first"

    async def status(request_id: str) -> RequestStatus | None:
        record = await get_request(engine, request_id)
        return record.status if record else None

    async with running_ledger(kafka_settings, engine):
        await produce(kafka_settings, topics.requests(MODEL), request(first))
        assert await eventually(lambda: status(first)) is RequestStatus.QUEUED
        await produce(kafka_settings, topics.results, result(first, RequestStatus.SUCCEEDED))
        await eventually(lambda: _equals(status(first), RequestStatus.SUCCEEDED))

        await produce(kafka_settings, topics.results, result(second, RequestStatus.FAILED))
        await eventually(lambda: _equals(status(second), RequestStatus.FAILED))
        # A request topic created after the ledger started is found by its pattern.
        await produce(
            kafka_settings, topics.requests(MODEL, Lane.BATCH), request(second, Lane.BATCH)
        )

        async def lane_known() -> bool:
            record = await get_request(engine, second)
            return record is not None and record.lane is Lane.BATCH

        await eventually(lane_known)
        # A second, conflicting final result never overwrites the first.
        await produce(kafka_settings, topics.results, result(first, RequestStatus.CANCELLED))
        await produce(kafka_settings, topics.results, result(second, RequestStatus.SUCCEEDED))
        marker = f"req_marker_{uuid.uuid4().hex[:6]}"
        await produce(kafka_settings, topics.results, result(marker, RequestStatus.EXPIRED))
        await eventually(lambda: _equals(status(marker), RequestStatus.EXPIRED))

    done = await get_request(engine, first)
    assert done is not None and done.status is RequestStatus.SUCCEEDED
    assert done.lane is Lane.INTERACTIVE and done.finished_at == NOW + timedelta(seconds=1)
    assert done.result is not None and done.result["status"] == "succeeded"
    failed = await get_request(engine, second)
    assert failed is not None and failed.status is RequestStatus.FAILED
    assert failed.result is not None and failed.result["error"]["message"] == "failed in test"
    async with engine.connect() as connection:
        error = await connection.scalar(select(requests.c.error).where(requests.c.id == second))
    assert error == {"type": "server_error", "message": "failed in test"}


async def _dead_letters(kafka: KafkaSettings, count: int) -> list[Any]:
    consumer = new_consumer(kafka, client_id="test-dlq", group_id=None)
    await consumer.start()
    try:
        consumer.subscribe([topics_for(kafka).dead_letter])
        found: list[Any] = []
        deadline = time.monotonic() + 10
        while len(found) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            found.extend(record for records in batch.values() for record in records)
        return found
    finally:
        await consumer.stop()


async def test_poison_goes_to_dead_letter_and_the_ledger_goes_on(
    kafka_settings: KafkaSettings, engine: AsyncEngine
) -> None:
    topics = topics_for(kafka_settings)
    version_2 = (
        usage("use_v2").model_dump_json().replace('"schema_version":1', '"schema_version":2')
    )
    # Valid to pydantic, refused by PostgreSQL: a NUL in text, a cost beyond numeric(20,10)
    # (on a model without a catalog price, so the ledger keeps the event's cost).
    refused = [usage(tenant="a\x00b"), usage(cost_usd=Decimal("1e12"), model="unpriced")]
    async with running_ledger(kafka_settings, engine):
        await produce(
            kafka_settings,
            topics.usage,
            b"not json",
            version_2.encode(),
            usage("use_good_1"),
            *refused,
            usage("use_good_2"),
        )
        await eventually(lambda: _equals(usage_count(engine), 2), timeout_s=10)
        letters = await _dead_letters(kafka_settings, 4)
    assert [record.value for record in letters[:2]] == [b"not json", version_2.encode()]
    reasons = [header(record, DLQ_REASON) or "" for record in letters]
    assert all(header(record, DLQ_TOPIC) == topics.usage for record in letters)
    assert "not a valid UsageEvent" in reasons[0]
    assert "schema_version" in reasons[1]
    assert all("refused by PostgreSQL" in reason for reason in reasons[2:])
    assert len(letters) == 4


async def test_offsets_are_committed_only_after_the_database_commit(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    topics = topics_for(kafka_settings)
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    database_down = True

    asyncpg = importlib.import_module("asyncpg")  # untyped package: keep mypy out of it

    async def connect() -> Any:
        if database_down:
            raise ConnectionRefusedError("database is down (test)")
        return await asyncpg.connect(dsn)

    flaky = create_async_engine(database_url, async_creator=connect, poolclass=NullPool)
    reader = create_engine(DatabaseSettings(database_url=database_url))
    group = f"{kafka_settings.topic_prefix}ledger"
    try:
        first = [usage(f"use_a{i}") for i in range(20)]
        async with running_ledger(kafka_settings, flaky):
            await produce(kafka_settings, topics.usage, *first)
            await asyncio.sleep(2)  # the ledger keeps failing and retrying meanwhile
            assert await usage_count(reader) == 0
            assert await committed(kafka_settings, group, topics.usage) == 0
            database_down = False
            await eventually(lambda: _equals(usage_count(reader), 20))
            await eventually(lambda: _equals(committed(kafka_settings, group, topics.usage), 20))

        # Stopped: new events wait in Kafka; a new instance records each exactly once.
        second = [usage(f"use_b{i}") for i in range(15)]
        await produce(kafka_settings, topics.usage, *second, first[0], second[0])
        async with running_ledger(kafka_settings, flaky):
            await eventually(lambda: _equals(committed(kafka_settings, group, topics.usage), 37))
        assert await usage_count(reader) == 35
        async with reader.connect() as connection:
            ids = set((await connection.execute(select(usage_events.c.event_id))).scalars())
        assert ids == {event.event_id for event in first + second}
    finally:
        await flaky.dispose()
        await reader.dispose()


# Pure helpers (no Kafka, no PostgreSQL).


def record(topic: str, value: bytes, partition: int = 0, offset: int = 0) -> Record:
    return ConsumerRecord(topic, partition, offset, 0, 0, b"k", value, None, 1, len(value), ())


def test_subscription_pattern_matches_only_ledger_topics() -> None:
    pattern = re.compile(subscription_pattern("a.b."))
    for topic in ["a.b.usage", "a.b.results", "a.b.requests.gpt-4o", "a.b.requests.m.batch"]:
        assert pattern.match(topic), topic
    for topic in ["a.b.dead-letter", "a.b.replies.i1", "aXb.usage", "a.b.usage2", "a.b.requests."]:
        assert not pattern.match(topic), topic


def test_plan_batch_dedupes_by_id_and_keeps_the_first() -> None:
    topics = Topics("p.")
    event = usage("use_1")
    records = [
        record(topics.usage, encode(event), offset=0),
        record(topics.usage, encode(event), offset=1),
        record(topics.results, encode(result("r1", RequestStatus.SUCCEEDED)), offset=2),
        record(topics.results, encode(result("r1", RequestStatus.FAILED)), offset=3),
        record(topics.requests(MODEL), encode(request("r1")), offset=4),
        record(topics.results, encode(result("r2", RequestStatus.QUEUED)), offset=5),
        record(topics.usage, b"{}", offset=6),
        # The worker pool dead-letters request-topic poison; the ledger only skips it.
        record(topics.requests(MODEL), b"junk", offset=7),
    ]
    batch = plan_batch(topics, records)
    assert [row.key for row in batch.rows[Kind.USAGE]] == ["use_1"]
    assert [row.values["status"] for row in batch.rows[Kind.RESULT]] == ["succeeded"]
    assert [row.values["lane"] for row in batch.rows[Kind.REQUEST]] == ["interactive"]
    assert [poison.record.offset for poison in batch.poison] == [5, 6]
    assert "not final" in batch.poison[0].reason
    assert len(batch) == 3


def test_positions() -> None:
    records = [record("t", b"", 0, 5), record("t", b"", 0, 6), record("t", b"", 1, 9)]
    assert commit_positions(records) == {TopicPartition("t", 0): 7, TopicPartition("t", 1): 10}
    assert first_offsets(records) == {TopicPartition("t", 0): 5, TopicPartition("t", 1): 9}


def test_a_request_and_its_result_in_one_batch_pair_up() -> None:
    topics = Topics("p.")
    planned = plan_batch(topics, [
        record(topics.requests(MODEL), encode(request("both", Lane.BATCH)), offset=0),
        record(topics.requests(MODEL), encode(request("queued_only")), offset=1),
        record(topics.results, encode(result("both", RequestStatus.SUCCEEDED)), offset=2),
        record(topics.results, encode(result("result_only", RequestStatus.FAILED)), offset=3),
    ])
    alone, unanswered, answered = pair_answered(
        planned.rows[Kind.REQUEST], planned.rows[Kind.RESULT])
    assert [row.key for row in alone] == ["queued_only"]
    assert [row.key for row in unanswered] == ["result_only"]
    assert [(row["id"], row["lane"], row["status"]) for row in answered] == [
        ("both", "batch", "succeeded")]


async def test_requests_answered_in_the_same_batch_keep_first_final_wins(
    engine: AsyncEngine,
) -> None:
    topics = Topics("p.")
    tag = uuid.uuid4().hex[:6]
    fresh, late, queued = f"req_fresh_{tag}", f"req_late_{tag}", f"req_queued_{tag}"

    def batch(*messages: tuple[str, BaseModel]) -> Any:
        return plan_batch(topics, [record(topic, encode(message), offset=offset)
                                   for offset, (topic, message) in enumerate(messages)])

    # Earlier batches: `late` got its (failed) result before its request; `queued` is queued.
    await write_batch(engine, batch((topics.results, result(late, RequestStatus.FAILED))))
    await write_batch(engine, batch((topics.requests(MODEL), request(queued))))
    # One batch: each request with a final result.
    await write_batch(engine, batch(
        (topics.requests(MODEL), request(fresh, Lane.BATCH)),
        (topics.requests(MODEL), request(late, Lane.BATCH)),
        (topics.requests(MODEL), request(queued)),
        (topics.results, result(fresh, RequestStatus.SUCCEEDED)),
        (topics.results, result(late, RequestStatus.SUCCEEDED)),
        (topics.results, result(queued, RequestStatus.CANCELLED)),
    ))

    rows = {}
    for request_id in (fresh, late, queued):
        rows[request_id] = await get_request(engine, request_id)
    assert {key: (row.status, row.lane) for key, row in rows.items() if row} == {
        fresh: (RequestStatus.SUCCEEDED, Lane.BATCH),
        late: (RequestStatus.FAILED, Lane.BATCH),  # the first final stays; the lane fills in
        queued: (RequestStatus.CANCELLED, Lane.INTERACTIVE),
    }
    assert rows[fresh] is not None and rows[fresh].result is not None
    assert rows[fresh].result["status"] == "succeeded"
    assert rows[late] is not None and rows[late].result is not None
    assert rows[late].result["error"]["message"] == "failed in test"
