"""Cancels older than `cancel_lookback_s` are not loaded, on the in-memory Kafka port.

Also the port's record timestamps and `offsets_for_times`, which that relies on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.kafka import TopicPartition, clients, encode, ensure_topics, new_consumer, new_producer
from broker.settings import KafkaSettings
from schemas import Topics
from schemas.messages import CancelRequested
from workers.inference import cancels
from workers.inference.cancels import CancelledIds, CancelListener

HOUR_MS = 3_600_000


def _memory(cancel_lookback_s: float = 25 * 3600.0) -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}", topic_prefix="m.",
                         cancel_lookback_s=cancel_lookback_s)


def test_the_lookback_is_the_cancels_topic_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KafkaSettings().cancel_lookback_s == 25 * 3600  # above the batch lane's 24 h
    monkeypatch.setenv("SLUICE_CANCEL_LOOKBACK_S", "7200")
    assert cancels.topic_configs(KafkaSettings()) == {"cleanup.policy": "delete",
                                              "retention.ms": "7200000"}


async def test_memory_records_keep_their_timestamp_and_are_found_by_time() -> None:
    settings = _memory()
    topic = "m.times"
    await ensure_topics(settings, [topic], partitions=2, configs={"retention.ms": "1"})
    now_ms = int(time.time() * 1000)
    producer = new_producer(settings, client_id="test")
    consumer = new_consumer(settings, client_id="test", group_id=None)
    await producer.start()
    await consumer.start()
    try:
        for partition, at_ms in ((0, now_ms - 2 * HOUR_MS), (0, now_ms - 2 * HOUR_MS),
                                 (0, now_ms), (1, now_ms - 2 * HOUR_MS)):
            await producer.send_and_wait(topic, b"x", partition=partition, timestamp_ms=at_ms)
        await producer.send_and_wait(topic, b"now", partition=1)
        tps = [TopicPartition(topic, p) for p in range(2)]
        found = await consumer.offsets_for_times({tp: now_ms - HOUR_MS for tp in tps})
        assert found[tps[0]] is not None and found[tps[0]][:2] == (2, now_ms)
        assert found[tps[1]] is not None and found[tps[1]].offset == 1
        assert found[tps[1]].timestamp >= now_ms  # stamped when written
        later = await consumer.offsets_for_times({tps[0]: now_ms + HOUR_MS})
        assert later == {tps[0]: None}

        consumer.assign(tps)
        assert await clients.start_at_time(consumer, tps, now_ms + HOUR_MS)
        assert [await consumer.position(tp) for tp in tps] == [3, 2]  # all older: the end
        assert await clients.start_at_time(consumer, tps, now_ms - HOUR_MS)
        assert [await consumer.position(tp) for tp in tps] == [2, 1]
    finally:
        await consumer.stop()
        await producer.stop()


async def test_a_listener_loads_only_the_cancels_of_the_lookback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts: list[tuple[list[TopicPartition], int]] = []
    start_at_time = clients.start_at_time

    async def recorded(consumer: Any, partitions: list[TopicPartition], since_ms: int) -> bool:
        starts.append((list(partitions), since_ms))
        return await start_at_time(consumer, partitions, since_ms)

    monkeypatch.setattr(cancels, "start_at_time", recorded, raising=False)
    settings = _memory(cancel_lookback_s=3600.0)
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings, [topics.cancels], partitions=2)
    now_ms = int(time.time() * 1000)
    producer = new_producer(settings, client_id="test")
    await producer.start()

    async def cancel(request_id: str, partition: int, at_ms: int | None = None) -> None:
        marker = CancelRequested(request_id=request_id, tenant="acme",
                                 requested_at=datetime.now(UTC))
        await producer.send_and_wait(topics.cancels, encode(marker), key=request_id.encode(),
                                     partition=partition, timestamp_ms=at_ms)

    await cancel("req_old", 0, now_ms - 2 * HOUR_MS)
    await cancel("req_recent", 0, now_ms - 60_000)
    await cancel("req_old_alone", 1, now_ms - 2 * HOUR_MS)
    cancelled = CancelledIds()
    stop = asyncio.Event()
    task = asyncio.create_task(CancelListener(settings, topics, cancelled).run(stop))
    try:
        await _until(lambda: cancelled.is_cancelled("req_recent", "acme"))
        await cancel("req_live", 1)
        await _until(lambda: cancelled.is_cancelled("req_live", "acme"))
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await producer.stop()
    assert not cancelled.is_cancelled("req_old", "acme")
    assert not cancelled.is_cancelled("req_old_alone", "acme")
    assert len(cancelled) == 2
    # It did not read the topic from its beginning: each partition started an hour back.
    [(partitions, since_ms)] = starts
    assert partitions == [TopicPartition(topics.cancels, p) for p in range(2)]
    assert abs(since_ms - (now_ms - HOUR_MS)) < 5_000


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
