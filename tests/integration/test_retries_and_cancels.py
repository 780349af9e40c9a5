"""Delayed retries never block a partition; cancellation; the worker status endpoint."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from broker.config import parse_config
from broker.embedded import free_port
from broker.kafka import encode, new_producer
from broker.settings import KafkaSettings, WorkerSettings
from broker.stores.keys import create_api_key
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest, Topics
from simulator import Faults, SimulatorSettings, create_simulator_app
from tests.integration.stack import eventually, running_stack
from tests.integration.test_failover import DOWN, submit, two_deployments
from workers.inference import InferencePool, NoResultsOfRecord
from workers.inference.retries import NOT_BEFORE, RETRY_TOPIC
from workers.providers import build_provider

pytestmark = pytest.mark.integration


def _request(name: str) -> InferenceRequest:
    body = ChatCompletionRequest(model="gpt-4o-mini",
                                 messages=[ChatMessage(role="user", content=name)])
    return InferenceRequest(id=f"req_{name}_{uuid.uuid4().hex[:6]}", model="gpt-4o-mini",
                            body=body, created_at=datetime.now(UTC), attempt=1)


async def test_a_later_retry_does_not_hold_back_an_earlier_one_behind_it(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    topics = Topics(kafka_settings.topic_prefix)
    async with running_stack(kafka_settings, database_url) as stack:
        late, early = _request("late"), _request("early")
        producer = new_producer(kafka_settings, client_id="test")
        await producer.start()
        try:
            now_ms = time.time() * 1000
            for request, delay_ms in ((late, 3000), (early, 0)):  # same partition, late first
                await producer.send_and_wait(
                    topics.retry("gpt-4o-mini"), encode(request), key=request.id.encode(),
                    partition=0, headers=[
                        (NOT_BEFORE, str(int(now_ms + delay_ms)).encode()),
                        (RETRY_TOPIC, topics.requests("gpt-4o-mini").encode())])
        finally:
            await producer.stop()
        await eventually(lambda: stack.scalar(
            "select status = 'succeeded' from requests where id = :id", id=early.id), 10)
        await eventually(lambda: stack.scalar(
            "select status = 'succeeded' from requests where id = :id", id=late.id), 10)
        # Held behind the later one, the early retry would have been called after it.
        early_call = await stack.scalar(
            "select extract(epoch from started_at) from usage_events where request_id = :id",
            id=early.id)
        late_call = await stack.scalar(
            "select extract(epoch from started_at) from usage_events where request_id = :id",
            id=late.id)
        assert early_call < late_call
        assert late_call * 1000 >= now_ms + 3000  # and the late one waited until it was due
        assert await stack.scalar("select attempt from usage_events where request_id = :id",
                                  id=late.id) == 1


async def test_cancel_a_request_waiting_for_its_retry(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = two_deployments(retry={"initial_backoff_s": 3, "max_backoff_s": 3})
    simulator = SimulatorSettings(model_faults={"up-first": DOWN, "up-second": DOWN})
    async with running_stack(kafka_settings, database_url, config=config,
                             simulator=simulator) as stack:
        [request_id] = await submit(stack, 1)

        async def both_tried() -> bool:
            return bool((await stack.simulator.get("/stats")).json()["requests"] >= 2)

        await eventually(both_tried, 10)
        other_key, _ = await create_api_key(stack.engine, "someone-else")
        foreign = await stack.client.post(f"/v1/requests/{request_id}/cancel",
                                          headers={"Authorization": f"Bearer {other_key}"})
        assert foreign.status_code == 404
        cancel = await stack.client.post(f"/v1/requests/{request_id}/cancel", headers=stack.auth)
        assert cancel.status_code == 202 and cancel.json()["cancel_requested"] is True
        await eventually(lambda: stack.scalar(
            "select status = 'cancelled' from requests where id = :id", id=request_id), 10)
        assert (await stack.simulator.get("/stats")).json()["requests"] == 2  # no third call
        state = (await stack.client.get(f"/v1/requests/{request_id}", headers=stack.auth)).json()
        assert state["status"] == "cancelled" and state["error"]["code"] == "cancelled"
        again = await stack.client.post(f"/v1/requests/{request_id}/cancel", headers=stack.auth)
        assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_worker_status_endpoint_shows_open_breakers(kafka_settings: KafkaSettings) -> None:
    config = parse_config({**two_deployments().model_dump(mode="json"),
                           "circuit_breaker": {"consecutive_failures": 1, "cooldown_s": 60}})
    sim = create_simulator_app(SimulatorSettings(model_faults={"up-first": Faults(
        error_rate=1.0, error_statuses=(502,))}))
    port = free_port()
    stop = asyncio.Event()
    async with httpx.ASGITransport(app=sim) as sim_transport:
        providers = {n: build_provider(n, d, sim_transport)
                     for n, d in config.deployments.items()}
        pool = InferencePool(kafka_settings, WorkerSettings(status_port=port), config,
                             ["gpt-4o-mini"], providers, NoResultsOfRecord())
        task = asyncio.create_task(pool.run(stop))
        try:
            producer = new_producer(kafka_settings, client_id="test")
            await producer.start()

            async def status() -> dict[str, object] | None:
                try:
                    async with httpx.AsyncClient() as client:
                        response = await client.get(f"http://127.0.0.1:{port}/status")
                        return dict(response.json())
                except httpx.ConnectError:
                    return None

            await eventually(status, 10)
            request = _request("probe")
            await producer.send_and_wait(Topics(kafka_settings.topic_prefix).requests(
                "gpt-4o-mini"), encode(request), key=request.id.encode())
            await producer.stop()

            async def first_open() -> bool:
                body = await status()
                breakers = body["breakers"] if body else {}
                assert isinstance(breakers, dict)
                return bool(breakers["first"]["state"] == "open")

            await eventually(first_open, 10)
            body = await status()
            assert body is not None and body["models"] == ["gpt-4o-mini"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
