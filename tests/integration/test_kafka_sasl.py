"""Kafka clients log in with SASL/SCRAM: a real Apache Kafka that refuses anonymous clients.

The broker's client listener speaks SASL_PLAINTEXT with SCRAM-SHA-256; its users are
created at format time (`StorageTool format --add-scram`), as a KRaft cluster's are.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from broker.apache_kafka import ApacheKafka, missing_tools
from broker.errors import BrokerUnavailable
from broker.kafka import KafkaError, ensure_topics, new_consumer, new_producer
from broker.settings import KafkaSettings

pytestmark = pytest.mark.integration

USER, PASSWORD = "ingress", "ingress-password-of-the-test"


@pytest.fixture(scope="module")
def sasl_bootstrap() -> Iterator[str]:
    missing = missing_tools()
    if missing:
        message = f"Apache Kafka needs {' and '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with ApacheKafka(nodes=1, sasl_users={USER: PASSWORD}) as kafka:
        yield kafka.bootstrap


def _settings(bootstrap: str, password: str) -> KafkaSettings:
    return KafkaSettings(
        kafka_bootstrap=bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username=USER, kafka_sasl_password=SecretStr(password),
        publish_timeout_s=5, session_timeout_ms=6000)


async def test_clients_with_the_right_password_round_trip(sasl_bootstrap: str) -> None:
    settings = _settings(sasl_bootstrap, PASSWORD)
    topic = f"{settings.topic_prefix}requests.m"
    await ensure_topics(settings, [topic], partitions=1)  # the admin client logs in too
    producer = new_producer(settings, client_id="t-producer")
    consumer = new_consumer(settings, client_id="t-consumer", group_id=f"{topic}.g")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer.subscribe([topic])
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert record.value == b"hello"


async def test_a_wrong_password_is_refused_with_a_clear_error(sasl_bootstrap: str) -> None:
    settings = _settings(sasl_bootstrap, "not-the-password")
    with pytest.raises(BrokerUnavailable) as refused:
        await ensure_topics(settings, [f"{settings.topic_prefix}requests.m"])
    message = str(refused.value)
    assert f"SASL user '{USER}'" in message
    assert "SCRAM-SHA-256" in message
    assert "refused the login" in message
    assert "invalid credentials" in message  # Kafka's own words, passed on
    producer = new_producer(settings, client_id="t-producer")
    with pytest.raises(KafkaError):
        await producer.start()
    await producer.stop()


async def test_a_client_without_sasl_gets_nothing(sasl_bootstrap: str) -> None:
    settings = KafkaSettings(kafka_bootstrap=sasl_bootstrap, publish_timeout_s=3)
    with pytest.raises(BrokerUnavailable):
        await ensure_topics(settings, ["anonymous.topic"])
