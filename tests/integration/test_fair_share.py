"""Fair share: one tenant's backlog does not make another tenant's requests wait behind it.

A budgeted deployment serves 40 requests a second. Tenant `flood` queues 400 asynchronous
requests (ten seconds of budget); then tenant `acme` asks one synchronous question. On
one FIFO topic served in order, acme's question would be answered after the backlog.
With fair share it is answered while most of the backlog still waits, and the backlog is
still served in full with the capacity acme does not use.
"""

from __future__ import annotations

import asyncio

import pytest

from broker.kafka import TopicPartition, decode, new_consumer, partition_ids, read_present
from broker.settings import KafkaSettings
from broker.stores.keys import create_api_key
from schemas import InferenceRequest, Lane, Topics
from tests.integration.stack import demo_config, eventually, running_stack
from workers.inference.consumer import OVERFLOW_HEADER

pytestmark = pytest.mark.integration

BACKLOG = 400
MODEL = "gpt-4o-mini"


async def _overflowed(kafka: KafkaSettings) -> set[str]:
    """The tenants of the requests a worker moved to the model's batch topic."""
    topic = Topics(kafka.topic_prefix).requests(MODEL, Lane.BATCH)
    partitions = [TopicPartition(topic, p) for p in await partition_ids(kafka, topic)]
    consumer = new_consumer(kafka, client_id="fair-share-count", group_id=None)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        return {decode(InferenceRequest, record).tenant
                async for record in read_present(consumer, partitions)
                if dict(record.headers).get(OVERFLOW_HEADER) == b"1"}
    finally:
        await consumer.stop()


async def test_a_backlog_of_one_tenant_does_not_delay_another(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = demo_config(rpm=40, window_s=1.0, burst=0.1)
    async with running_stack(kafka_settings, database_url, config=config) as stack:
        flood_key, _ = await create_api_key(stack.engine, "flood")
        body = {"model": MODEL, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Queue me."}]}
        flood_headers = {"Authorization": f"Bearer {flood_key}", "Prefer": "respond-async"}

        async def queue(index: int) -> None:
            answer = await stack.client.post("/v1/chat/completions", json=body,
                                             headers=flood_headers)
            assert answer.status_code == 202, answer.text

        for start in range(0, BACKLOG, 50):
            await asyncio.gather(*(queue(i) for i in range(start, start + 50)))
        await eventually(lambda: stack.scalar(
            "select count(*) from requests where tenant = 'flood'"))

        answer = await stack.client.post("/v1/chat/completions", headers=stack.auth, json={
            "model": MODEL, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Am I served?"}]})
        assert answer.status_code == 200, answer.text
        served_before = await stack.scalar(
            "select count(*) from requests where tenant = 'flood' and status <> 'queued'")
        # Acme went ahead of most of the backlog (in order it would have come after all).
        assert served_before < BACKLOG // 2, served_before
        # The backlog beyond flood's share of the worker waited on the batch topic.
        assert await _overflowed(stack.kafka) == {"flood"}

        # The backlog still gets everything acme leaves: all of it is answered.
        await eventually(lambda: stack.scalar(
            "select count(*) = :n from requests where tenant = 'flood' "
            "and status = 'succeeded'", n=BACKLOG), timeout_s=60)
