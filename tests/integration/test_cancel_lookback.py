"""The cancels topic keeps markers only as long as they matter, and workers read only those.

A cancel matters while its request can still run (`cancel_lookback_s`, 25 h by default):
the topic gets that `retention.ms`, even when it already existed, and a worker starts
reading each partition at its first marker that recent, not at the topic's beginning.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from broker.kafka import TopicPartition, clients, encode, ensure_topics, new_consumer, new_producer
from broker.settings import KafkaSettings, WorkerSettings
from schemas import Topics
from schemas.messages import CancelRequested
from simulator import SimulatorSettings, create_simulator_app
from tests.integration.stack import eventually
from tests.integration.test_failover import two_deployments
from workers.inference import InferencePool, NoResultsOfRecord
from workers.inference.cancels import CancelledIds, CancelListener
from workers.providers import build_provider

pytestmark = [pytest.mark.integration, pytest.mark.dev_broker]

HOUR_MS = 3_600_000


async def topic_configs(settings: KafkaSettings, topic: str) -> dict[str, str]:
    """Every config of `topic` as the brokers describe it (defaults included)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        async def described() -> dict[str, str]:
            # A topic created a moment ago may not be known to the broker asked yet.
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)])
            return {name: value for response in responses for entry in response.resources
                    if entry[0] == 0 for name, value, *_ in entry[4]}

        return await eventually(described, 10)
    finally:
        await admin.close()


@pytest.mark.kafka_engine("apache")
async def test_ensure_topics_sets_configs_on_new_and_existing_topics(
    kafka_settings: KafkaSettings,
) -> None:
    wanted = {"retention.ms": "7200000", "cleanup.policy": "delete"}
    fresh, existing = (f"{kafka_settings.topic_prefix}{name}" for name in ("fresh", "existing"))
    await ensure_topics(kafka_settings, [fresh], configs=wanted)
    assert (await topic_configs(kafka_settings, fresh)).items() >= wanted.items()

    # An operator's own config on an existing topic survives: AlterConfigs replaces them all.
    await ensure_topics(kafka_settings, [existing], configs={"segment.ms": "3600000"})
    assert (await topic_configs(kafka_settings, existing))["retention.ms"] != "7200000"
    await ensure_topics(kafka_settings, [existing], configs=wanted)
    configs = await topic_configs(kafka_settings, existing)
    assert configs.items() >= {**wanted, "segment.ms": "3600000"}.items()


@pytest.mark.kafka_engine("apache")
@pytest.mark.parametrize("before", ["absent", "without-retention"])
async def test_a_worker_gives_the_cancels_topic_the_lookback_retention(
    kafka_settings: KafkaSettings, before: str
) -> None:
    kafka = kafka_settings.model_copy(update={"cancel_lookback_s": 7200.0})
    cancels = Topics(kafka.topic_prefix).cancels
    if before == "without-retention":
        await ensure_topics(kafka, [cancels])
        assert (await topic_configs(kafka, cancels))["retention.ms"] != "7200000"
    config = two_deployments()
    sim = create_simulator_app(SimulatorSettings())
    stop = asyncio.Event()
    async with httpx.ASGITransport(app=sim) as transport:
        providers = {n: build_provider(n, d, transport) for n, d in config.deployments.items()}
        pool = InferencePool(kafka, WorkerSettings(), config, ["gpt-4o-mini"], providers,
                             NoResultsOfRecord())
        task = asyncio.create_task(pool.run(stop))
        try:
            async def retention() -> bool:
                configs = await topic_configs(kafka, cancels) if not task.done() else {}
                return configs.get("retention.ms") == "7200000"

            await eventually(retention, 30)
            configs = await topic_configs(kafka, cancels)
            assert configs["cleanup.policy"] == "delete"
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


def _marker(request_id: str) -> bytes:
    return encode(CancelRequested(request_id=request_id, tenant="acme",
                                  requested_at=datetime.now(UTC)))


async def test_a_worker_loads_only_the_cancels_of_the_lookback(
    kafka_settings: KafkaSettings,
) -> None:
    """Tansu cannot look offsets up by time (it answers each partition's first offset), so
    there the listener reads everything and keeps only recent markers; on Apache Kafka it
    also starts past the old ones (`test_start_at_time_skips_older_records`)."""
    kafka = kafka_settings.model_copy(update={"cancel_lookback_s": 3600.0})
    topics = Topics(kafka.topic_prefix)
    await ensure_topics(kafka, [topics.cancels], partitions=2)
    now_ms = int(time.time() * 1000)
    producer = new_producer(kafka, client_id="test")
    await producer.start()
    try:
        # Partition 0: an old marker, then a recent one; partition 1: only an old one.
        for request_id, partition, at_ms in (("req_old", 0, now_ms - 2 * HOUR_MS),
                                             ("req_recent", 0, now_ms - 60_000),
                                             ("req_old_alone", 1, now_ms - 2 * HOUR_MS)):
            await producer.send_and_wait(topics.cancels, _marker(request_id),
                                         key=request_id.encode(), partition=partition,
                                         timestamp_ms=at_ms)
        cancelled = CancelledIds()
        listener = CancelListener(kafka, topics, cancelled)
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        try:
            await eventually(lambda: _known(cancelled, "req_recent"), 20)
            # A partition that had only old markers still hears new ones.
            await producer.send_and_wait(topics.cancels, _marker("req_live"),
                                         key=b"req_live", partition=1)
            await eventually(lambda: _known(cancelled, "req_live"), 20)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    finally:
        await producer.stop()
    assert not cancelled.is_cancelled("req_old", "acme")
    assert not cancelled.is_cancelled("req_old_alone", "acme")
    assert len(cancelled) == 2


async def _known(cancelled: CancelledIds, request_id: str) -> bool:
    return cancelled.is_cancelled(request_id, "acme")


@pytest.mark.kafka_engine("apache")  # Tansu answers every past time with offset 0
async def test_start_at_time_skips_older_records(kafka_settings: KafkaSettings) -> None:
    topic = f"{kafka_settings.topic_prefix}times.{uuid.uuid4().hex[:6]}"
    await ensure_topics(kafka_settings, [topic], partitions=3)
    now_ms = int(time.time() * 1000)
    producer = new_producer(kafka_settings, client_id="test")
    await producer.start()
    try:
        for partition, at_ms in ((0, now_ms - 2 * HOUR_MS), (0, now_ms - 2 * HOUR_MS),
                                 (0, now_ms), (1, now_ms - 2 * HOUR_MS)):
            await producer.send_and_wait(topic, b"x", partition=partition, timestamp_ms=at_ms)
    finally:
        await producer.stop()
    consumer = new_consumer(kafka_settings, client_id="test", group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        assert await clients.start_at_time(consumer, tps, now_ms - HOUR_MS)
        # Recent records from 2 on; only old ones: the end; none at all: the end (0).
        assert [await consumer.position(tp) for tp in tps] == [2, 1, 0]
    finally:
        await consumer.stop()
