"""Ingress and the worker pool, wired exactly as in production, on the in-memory Kafka port.

No broker and no database: the point is that the components need nothing but the port
(`memory://` bootstrap) to be driven end to end in a unit test. The real brokers are the
integration suite's business.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest

from broker.batches.settings import BatchSettings
from broker.config import SluiceConfig, parse_config
from broker.kafka import TopicPartition, decode, new_consumer, partition_ids, read_present
from broker.settings import IngressSettings, KafkaSettings, WorkerSettings
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.hot_routes import serve
from ingress.services import IngressServices, Principal, StoredRequest
from schemas import InferenceResult, RequestStatus, Topics
from workers.inference import InferencePool
from workers.inference.results import NoResultsOfRecord
from workers.providers.simulated import SimulatedProvider

KEY = "sk-test"
HELLO = {"model": "m", "messages": [{"role": "user", "content": "Hello in memory!"}]}


class _OneKey:
    async def principal(self, secret: str, *, cached_only: bool = False) -> Principal | None:
        return Principal(tenant="acme", api_key_id="key_1") if secret == KEY else None


class _NoLedger:
    async def find(self, request_id: str) -> StoredRequest | None:
        return None


@dataclass
class _Stack:
    client: httpx.AsyncClient
    kafka: KafkaSettings


def _config() -> SluiceConfig:
    return parse_config({
        "models": {"m": {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}},
    })


@asynccontextmanager
async def _stack() -> AsyncIterator[_Stack]:
    kafka = KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}", topic_partitions=2)
    config = _config()
    stop = asyncio.Event()
    pool = InferencePool(kafka, WorkerSettings(), config, ["m"],
                         {"sim": SimulatedProvider("sim", config.deployments["sim"])},
                         NoResultsOfRecord())
    worker = asyncio.create_task(pool.run(stop))
    app = create_app(IngressServices(settings=IngressSettings(sync_timeout_s=10), kafka=kafka,
                                     config=config, api_keys=_OneKey(), requests=_NoLedger(),
                                     webhooks=WebhookSettings(), batches=BatchSettings()))
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=serve(app)), base_url="http://ingress",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as client:
            yield _Stack(client, kafka)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 20)


async def _results(kafka: KafkaSettings) -> list[InferenceResult]:
    topic = Topics(kafka.topic_prefix).results
    consumer = new_consumer(kafka, client_id="test", group_id=None)
    consumer.assign([TopicPartition(topic, p) for p in await partition_ids(kafka, topic)])
    await consumer.start()
    try:
        await consumer.seek_to_beginning()
        return [decode(InferenceResult, record)
                async for record in read_present(consumer, list(consumer.assignment()))]
    finally:
        await consumer.stop()


async def test_a_synchronous_call_is_answered_through_the_in_memory_port() -> None:
    async with _stack() as stack:
        response = await stack.client.post("/v1/chat/completions", json=HELLO)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["prompt_tokens"] > 0
        results = await _results(stack.kafka)
    assert [(r.request_id, r.status) for r in results] == [
        (response.headers["x-request-id"], RequestStatus.SUCCEEDED)]


async def test_queued_requests_all_reach_the_results_topic_once() -> None:
    async with _stack() as stack:
        accepted = await asyncio.gather(*(stack.client.post("/v1/requests", json=HELLO)
                                          for _ in range(20)))
        assert [r.status_code for r in accepted] == [202] * 20
        ids = {r.json()["id"] for r in accepted}
        for _ in range(200):
            results = await _results(stack.kafka)
            if len(results) >= 20:
                break
            await asyncio.sleep(0.05)
    assert sorted(r.request_id for r in results) == sorted(ids)
    assert {r.status for r in results} == {RequestStatus.SUCCEEDED}


async def test_the_lifespan_closes_kafka_when_its_host_fails() -> None:
    kafka = KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}")
    app = create_app(IngressServices(settings=IngressSettings(), kafka=kafka, config=_config(),
                                     api_keys=_OneKey(), requests=_NoLedger(),
                                     webhooks=WebhookSettings(), batches=BatchSettings()))
    with pytest.raises(RuntimeError, match="the host failed"):
        async with app.router.lifespan_context(app):
            assert app.state.ingress.publisher.ready
            raise RuntimeError("the host failed")
    assert not app.state.ingress.publisher.ready  # its producer was stopped and dropped
