"""A consumer whose broker cannot list a long partition history within its wait still reads.

Tansu stops listing a partition's batches when the fetch wait runs out and then answers
with nothing; `FetchPacing` must notice (empty polls while the broker is ahead of us) and
lengthen the wait. With a fixed 1 ms wait this test's consumer never reads its record.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from broker.kafka import ensure_topics, new_consumer, new_producer
from broker.kafka.fetch_pacing import FetchPacing
from broker.settings import KafkaSettings

# Fetch pacing is a workaround for the embedded broker only (broker/kafka/fetch_pacing.py).
pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("tansu")]

# Listing this many batches takes Tansu ~8 ms on the project machine: far past a 1 ms wait,
# and still past it on a machine four times faster.
HISTORY_BATCHES = 8000
PRODUCERS = 8  # one batch per produce request; parallel producers fill the history faster


async def _fill(settings: KafkaSettings, topic: str, batches: int) -> int:
    """Write `batches` one-record batches to partition 0; return the next offset."""
    producers = [new_producer(settings, client_id=f"fill-{n}") for n in range(PRODUCERS)]
    await asyncio.gather(*(producer.start() for producer in producers))
    try:
        async def write(producer_batches: int, producer_index: int) -> None:
            producer = producers[producer_index]
            for _ in range(producer_batches):
                await producer.send_and_wait(topic, b"old", partition=0)

        await asyncio.gather(*(write(batches // PRODUCERS, n) for n in range(PRODUCERS)))
        last = await producers[0].send_and_wait(topic, b"old", partition=0)
        return last.offset + 1
    finally:
        await asyncio.gather(*(producer.stop() for producer in producers))


async def test_a_starved_consumer_lengthens_its_wait_and_reads(
    kafka_settings: KafkaSettings,
) -> None:
    topic = f"{kafka_settings.topic_prefix}starving"
    await ensure_topics(kafka_settings, [topic], partitions=1)
    end = await _fill(kafka_settings, topic, HISTORY_BATCHES)

    settings = kafka_settings.model_copy(update={"fetch_max_wait_ms": 1})
    consumer = new_consumer(settings, client_id="starving", group_id=None)
    producer = new_producer(settings, client_id="newest")
    await asyncio.gather(consumer.start(), producer.start())
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek(partition, end)
    pacing = FetchPacing(consumer, quiet_ms=1, busy_ms=1)
    try:
        await producer.send_and_wait(topic, b"newest", partition=0)
        received: list[bytes | None] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not received and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            await pacing.observe_poll(batch)
            received = [record.value for records in batch.values() for record in records]
    finally:
        await asyncio.gather(consumer.stop(), producer.stop())
    assert received == [b"newest"]
    assert pacing.floor_ms > 1 and pacing.wait_ms == pacing.floor_ms
