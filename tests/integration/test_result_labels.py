"""Labels that let readers of `<prefix>results` skip what they do not need, on real Kafka."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from broker.kafka import (
    decode,
    ensure_topics,
    header,
    new_consumer,
    partition_ids,
    read_present,
    topics_for,
)
from broker.kafka.fetch_pacing import FetchPacing
from broker.settings import KafkaSettings
from schemas import InferenceResult
from tests.integration.stack import running_stack

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_results_carry_tenant_and_webhook_labels(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")
    async with running_stack(kafka_settings, database_url) as stack:
        secret = await stack.client.post("/v1/webhooks/secrets", headers=stack.auth)
        assert secret.status_code == 201, secret.text
        plain = await stack.client.post("/v1/chat/completions", json=CHAT, headers=stack.auth)
        assert plain.status_code == 200, plain.text
        hooked = await stack.client.post(
            "/v1/chat/completions", json=CHAT,
            headers={**stack.auth, "X-Webhook-URL": "http://127.0.0.1:9/hook"})
        assert hooked.status_code == 200, hooked.text
        ids = {plain.headers["x-request-id"]: False, hooked.headers["x-request-id"]: True}

        consumer = new_consumer(kafka_settings, client_id="labels", group_id=None)
        await consumer.start()
        try:
            topic = topics_for(kafka_settings).results
            partitions = [TopicPartition(topic, p)
                          for p in await partition_ids(kafka_settings, topic)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            labels = {
                record.key.decode(): (header(record, "tenant"), header(record, "webhook"))
                async for record in read_present(consumer, partitions)
                if record.key is not None and record.key.decode() in ids
            }
        finally:
            await consumer.stop()
    assert labels == {request_id: ("acme", "1" if has_hook else None)
                      for request_id, has_hook in ids.items()}


@pytest.mark.kafka_engine("tansu")  # pacing runs on the embedded broker only
async def test_fetch_pacing_reaches_aiokafka(kafka_settings: KafkaSettings) -> None:
    """FetchPacing sets aiokafka's per-fetch wait; this fails if aiokafka renames it."""
    topic = topics_for(kafka_settings).results
    await ensure_topics(kafka_settings, [topic])
    consumer = new_consumer(kafka_settings, client_id="pacing", group_id=None)
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])  # aiokafka stops a consumer cleanly only then
    try:
        fetcher = consumer._fetcher
        assert fetcher._fetch_max_wait_ms == kafka_settings.fetch_max_wait_ms
        pacing = FetchPacing(consumer, quiet_ms=kafka_settings.fetch_max_wait_ms,
                             busy_ms=kafka_settings.fetch_max_wait_ms * 4)
        pacing.observe(100)
        assert fetcher._fetch_max_wait_ms == kafka_settings.fetch_max_wait_ms * 2
        await consumer.getmany(timeout_ms=200)  # fetches run with the new wait
        pacing.observe(0)
        assert fetcher._fetch_max_wait_ms == kafka_settings.fetch_max_wait_ms
    finally:
        await consumer.stop()


async def test_reply_topics_have_their_own_partition_count(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    """Reply topics follow SLUICE_REPLY_TOPIC_PARTITIONS, not the request topics' count."""
    settings = kafka_settings.model_copy(update={"reply_topic_partitions": 2})
    assert settings.topic_partitions not in (1, 2)
    async with running_stack(settings, database_url) as stack:
        reply = await stack.client.post("/v1/chat/completions", json=CHAT, headers=stack.auth)
        assert reply.status_code == 200, reply.text
        consumer = new_consumer(settings, client_id="partitions", group_id=None)
        await consumer.start()
        try:
            topics = topics_for(settings)
            replies = [name for name in await consumer.topics()
                       if name.startswith(topics.replies(""))]
            counts = {name: len(await partition_ids(settings, name))
                      for name in [*replies, topics.requests("gpt-4o-mini")]}
        finally:
            await consumer.stop()
    assert len(replies) == 1
    assert counts == {replies[0]: 2, topics.requests("gpt-4o-mini"): settings.topic_partitions}


@pytest.mark.kafka_engine("tansu")  # sticky reply partitions are its workaround
async def test_replies_sent_together_share_one_partition(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of replies to an ingress reply topic lands in one partition, not one per key.

    Keyed by correlation id, 16 replies would cover several of the 8 partitions (all in one,
    with odds of 8^-15); with one slot for the whole test they share one.
    """
    monkeypatch.setenv("SLUICE_REPLY_PARTITION_SLOT_S", "1e9")  # one slot: the whole test
    settings = kafka_settings.model_copy(update={"reply_topic_partitions": 8})
    async with running_stack(settings, database_url) as stack:
        replies = await asyncio.gather(*[
            stack.client.post("/v1/chat/completions", json=CHAT, headers=stack.auth)
            for _ in range(16)])
        assert [reply.status_code for reply in replies] == [200] * 16
        request_ids = {reply.headers["x-request-id"] for reply in replies}
        consumer = new_consumer(settings, client_id="reply-partitions", group_id=None)
        await consumer.start()
        try:
            topics = topics_for(settings)
            topic = next(name for name in await consumer.topics()
                         if name.startswith(topics.replies("")))
            partitions = [TopicPartition(topic, p) for p in await partition_ids(settings, topic)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            landed = {record.partition async for record in read_present(consumer, partitions)
                      if decode(InferenceResult, record).request_id in request_ids}
        finally:
            await consumer.stop()
    assert len(partitions) == 8
    assert len(landed) == 1
