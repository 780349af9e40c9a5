"""A Kafka-native service needs no code of ours: plain aiokafka, plain JSON, its own topic."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from broker.settings import KafkaSettings
from tests.integration.stack import running_stack

pytestmark = pytest.mark.integration


async def test_plain_aiokafka_client_gets_its_reply_on_its_own_topic(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    prefix = kafka_settings.topic_prefix
    reply_topic = f"{prefix}my-service.replies"
    request_id = f"billing-{uuid.uuid4().hex}"
    async with running_stack(kafka_settings, database_url):
        # --- everything below is what the README shows a Kafka-native client doing ---
        bootstrap = kafka_settings.kafka_bootstrap
        consumer = AIOKafkaConsumer(reply_topic, bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", group_id=f"g-{request_id}")
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        await consumer.start()
        try:
            request = {
                "schema_version": 1,
                "id": request_id,
                "model": "gpt-4o-mini",
                "tenant": "billing",
                "created_at": datetime.now(UTC).isoformat(),
                "reply_to": reply_topic,
                "correlation_id": "invoice-42",
                "body": {"model": "gpt-4o-mini",
                         "messages": [{"role": "user", "content": "Summarise invoice 42"}]},
            }
            await producer.send_and_wait(
                f"{prefix}requests.gpt-4o-mini", json.dumps(request).encode(),
                key=request_id.encode())
            reply = None
            while reply is None:
                batch = await consumer.getmany(timeout_ms=20_000)
                assert batch, "no reply within 20 s"
                for records in batch.values():
                    reply = json.loads(records[0].value)
                    headers = dict(records[0].headers)
        finally:
            await consumer.stop()
            await producer.stop()
    assert reply["request_id"] == request_id
    assert reply["correlation_id"] == "invoice-42"
    assert headers["correlation_id"] == b"invoice-42"
    assert reply["status"] == "succeeded"
    assert reply["completion"]["choices"][0]["message"]["content"]
    assert reply["tenant"] == "billing"


async def test_ingress_serves_the_asyncapi_document_of_its_topics(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    prefix = kafka_settings.topic_prefix
    async with running_stack(kafka_settings, database_url) as stack:
        anonymous = await stack.client.get("/asyncapi.json")
        response = await stack.client.get("/asyncapi.json", headers=stack.auth)
        # It names the Kafka address and every topic: never without a key.
        assert anonymous.status_code == 401
        for generated in ("/openapi.json", "/docs", "/redoc"):
            assert (await stack.client.get(generated)).status_code == 404
    assert response.status_code == 200
    document = response.json()
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {f"{prefix}requests.gpt-4o-mini", f"{prefix}requests.gpt-4o-mini.batch",
            f"{prefix}results", f"{prefix}usage", f"{prefix}dead-letter"} <= addresses
    assert {"InferenceRequest", "InferenceResult", "UsageEvent"} <= set(
        document["components"]["schemas"])
