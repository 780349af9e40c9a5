"""Reply topics do not leak: a random one goes with its instance, a named one is reused."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer

from broker.settings import IngressSettings, KafkaSettings
from tests.integration.stack import eventually, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.dev_broker]

HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there!"}]}


async def _reply_topics(kafka: KafkaSettings) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.kafka_bootstrap)
    await consumer.start()
    try:
        prefix = f"{kafka.topic_prefix}replies."
        return {name for name in await consumer.topics() if name.startswith(prefix)}
    finally:
        await consumer.stop()


async def test_an_instance_without_an_id_deletes_its_reply_topic_on_shutdown(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        answer = await stack.client.post("/v1/chat/completions", json=HELLO, headers=stack.auth)
        assert answer.status_code == 200, answer.text
        topic = stack.ingress.replies.topic
        assert topic in await _reply_topics(kafka_settings)

    async def gone() -> bool:
        return topic not in await _reply_topics(kafka_settings)

    await eventually(gone)


async def test_an_instance_with_a_stable_id_keeps_and_reuses_its_reply_topic(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    named = IngressSettings(ingress_id="pod-a", sync_timeout_s=20)
    for _ in range(2):  # a restart of the same replica
        async with running_stack(kafka_settings, database_url, ingress=named) as stack:
            answer = await stack.client.post("/v1/chat/completions", json=HELLO,
                                             headers=stack.auth)
            assert answer.status_code == 200, answer.text
        assert await _reply_topics(kafka_settings) == {f"{kafka_settings.topic_prefix}"
                                                       "replies.pod-a"}
