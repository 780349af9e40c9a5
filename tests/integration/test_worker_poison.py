"""Poison messages on a request topic go to the dead-letter topic; the worker keeps going."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from broker.kafka import DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC, new_consumer, new_producer
from broker.settings import KafkaSettings
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest, Topics
from tests.integration.stack import eventually, running_stack

pytestmark = pytest.mark.integration


def _request(model: str) -> InferenceRequest:
    return InferenceRequest(
        id=f"req_poison_{model}", model=model, created_at=datetime.now(UTC),
        body=ChatCompletionRequest(model=model, messages=[ChatMessage(role="user", content="x")]),
    )


async def test_poison_is_dead_lettered_and_good_messages_flow(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    topics = Topics(kafka_settings.topic_prefix)
    topic = topics.requests("gpt-4o-mini")
    wrong_version = _request("gpt-4o-mini").model_dump_json().replace(
        '"schema_version":1', '"schema_version":2')
    poison = [
        b"this is not json",
        wrong_version.encode(),
        _request("some-other-model").model_dump_json().encode(),
    ]
    async with running_stack(kafka_settings, database_url) as stack:
        producer = new_producer(kafka_settings, client_id="test")
        await producer.start()
        try:
            for index, value in enumerate(poison):
                # One partition, so the good request below queues behind the poison.
                await producer.send_and_wait(topic, value, key=f"p{index}".encode(), partition=0)
            good = _request("gpt-4o-mini").model_dump_json().encode()
            await producer.send_and_wait(topic, good, key=b"good", partition=0)
        finally:
            await producer.stop()

        await eventually(lambda: stack.scalar(
            "select 1 from requests where id = 'req_poison_gpt-4o-mini' and status = 'succeeded'"))

        consumer = new_consumer(kafka_settings, client_id="dlq-reader", group_id=None)
        await consumer.start()
        consumer.subscribe([topics.dead_letter])
        entries = []
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while len(entries) < 3 and asyncio.get_running_loop().time() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                entries += [record for records in batch.values() for record in records]
        finally:
            await consumer.stop()
        # Dead letters keep their keys, so they spread over partitions: order by origin.
        entries.sort(key=lambda entry: int(dict(entry.headers)[DLQ_OFFSET]))
        assert [entry.value for entry in entries] == poison
        reasons = [dict(entry.headers)[DLQ_REASON].decode() for entry in entries]
        assert "not a valid InferenceRequest" in reasons[0]
        assert "schema_version" in reasons[1]
        assert "some-other-model" in reasons[2]
        for offset, entry in enumerate(entries):
            headers = dict(entry.headers)
            assert headers[DLQ_TOPIC].decode() == topic
            assert headers[DLQ_OFFSET].decode() == str(offset)
