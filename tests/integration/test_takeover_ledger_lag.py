"""A takeover while the ledger is down: the dead worker's published answer is not billed again.

A worker answered request X (its result and usage are on Kafka) and died before committing
X's offset; the ledger is not running, so the results of record do not know X yet. A new
worker takes the partition over and gets X again. It must wait for the ledger (which comes
back 6 s later, longer than the fixed 3 s the worker used to wait) instead of calling the
provider: no provider call for X, and exactly one usage row.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.kafka import Producer, encode, ensure_topics, new_producer, result_headers, topics_for
from broker.kafka.lag import consumer_lag
from broker.kafka.ledger_offsets import ledger_group
from broker.settings import DatabaseSettings, KafkaSettings, LedgerSettings, WorkerSettings
from broker.stores.database import create_engine
from broker.stores.prices import import_config_prices
from schemas import (
    ChatCompletionRequest,
    ChatMessage,
    InferenceRequest,
    InferenceResult,
    RequestStatus,
    UsageEvent,
)
from simulator import SimulatorSettings, create_simulator_app
from tests.integration.stack import SIM_API_KEY, SIM_BASE, demo_config, eventually
from workers.inference import InferencePool
from workers.inference.results import PostgresFinalResults
from workers.ledger import Ledger
from workers.providers import build_provider

pytestmark = [pytest.mark.integration]

MODEL = "gpt-4o-mini"
LEDGER_DOWN_S = 6.0  # twice the fixed wait this replaces


async def _answered(producer: Producer, kafka: KafkaSettings, request_id: str,
                    at: datetime) -> None:
    """What a worker publishes for a request it served: the request, result and usage."""
    topics = topics_for(kafka)
    request = InferenceRequest(
        id=request_id, model=MODEL, tenant="acme", created_at=at,
        body=ChatCompletionRequest(model=MODEL, messages=[ChatMessage(role="user",
                                                                      content="hi")]))
    result = InferenceResult(request_id=request_id, model=MODEL, tenant="acme",
                             status=RequestStatus.SUCCEEDED, deployment="sim",
                             provider="openai", attempts=1, created_at=at, finished_at=at)
    usage = UsageEvent(event_id=f"use_{uuid.uuid4().hex}", request_id=request_id,
                       tenant="acme", model=MODEL, deployment="sim", provider="openai",
                       input_tokens=8, output_tokens=2, latency_ms=40.0, status="succeeded",
                       started_at=at, finished_at=at)
    await asyncio.gather(*[
        await producer.send(topics.requests(MODEL), encode(request), key=request_id.encode()),
        await producer.send(topics.results, encode(result), key=request_id.encode(),
                            headers=result_headers("acme", False)),
        await producer.send(topics.usage, encode(usage), key=b"acme"),
    ])


@asynccontextmanager
async def _ledger(kafka: KafkaSettings, engine: AsyncEngine) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(Ledger(kafka, LedgerSettings(), engine).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _caught_up(kafka: KafkaSettings, group: str, *topics: str) -> bool:
    """Whether `group` committed everything on `topics` (one topic per lag question)."""
    for topic in topics:
        [lag] = await consumer_lag(kafka, {group: topic})
        if lag.lag:
            return False
    return True


async def test_a_takeover_waits_for_a_ledger_further_behind_than_3_s(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    topics = topics_for(kafka_settings)
    config = demo_config()
    engine = create_engine(DatabaseSettings(database_url=database_url))
    await import_config_prices(engine, config, datetime.now(UTC))
    await ensure_topics(kafka_settings, [topics.requests(MODEL), topics.results, topics.usage,
                                         topics.dead_letter])
    producer = new_producer(kafka_settings, client_id="test-dead-worker")
    await producer.start()
    sim_transport = httpx.ASGITransport(app=create_simulator_app(SimulatorSettings()))
    simulator = httpx.AsyncClient(transport=sim_transport, base_url=SIM_BASE)
    stop_pool = asyncio.Event()
    pool_task: asyncio.Task[None] | None = None

    async def scalar(sql: str) -> int:
        async with engine.connect() as connection:
            return int((await connection.execute(text(sql))).scalar() or 0)

    try:
        # A ledger ran on this cluster before (its group committed), then stopped.
        long_ago = datetime.now(UTC) - timedelta(minutes=1)
        await _answered(producer, kafka_settings, "req_earlier", long_ago)
        async with _ledger(kafka_settings, engine):
            await eventually(lambda: _caught_up(kafka_settings, ledger_group(
                kafka_settings.topic_prefix), topics.results, topics.usage), 30)
        # The dead worker served X (answer and usage on Kafka), never committed X's offset.
        request_id = f"req_{uuid.uuid4().hex}"
        await _answered(producer, kafka_settings, request_id, datetime.now(UTC))
        await asyncio.sleep(0.1)  # X is older than the next assignment
        providers = {name: build_provider(name, deployment, sim_transport, api_key=SIM_API_KEY)
                     for name, deployment in config.deployments.items()}
        pool = InferencePool(kafka_settings, WorkerSettings(), config, [MODEL], providers,
                             PostgresFinalResults(engine))
        pool_task = asyncio.create_task(pool.run(stop_pool))
        await eventually(lambda: _ready(pool), 60)
        await asyncio.sleep(LEDGER_DOWN_S)  # the ledger is down: the new worker must wait
        async with _ledger(kafka_settings, engine):
            # The worker decided on X (skipped or served) and the ledger read everything.
            await eventually(lambda: _caught_up(
                kafka_settings, topics.worker_group(MODEL), topics.requests(MODEL)), 60)
            await eventually(lambda: _caught_up(kafka_settings, ledger_group(
                kafka_settings.topic_prefix), topics.results, topics.usage), 30)
        stats = (await simulator.get("/stats")).json()
        assert stats["requests"] == 0, "the dead worker's answered request was called again"
        assert await scalar(
            f"select count(*) from usage_events where request_id = '{request_id}'") == 1
        assert await scalar(
            f"select count(*) from requests where id = '{request_id}' "
            "and status = 'succeeded'") == 1
    finally:
        stop_pool.set()
        if pool_task is not None:
            await asyncio.wait_for(pool_task, 40)
        await producer.stop()
        await simulator.aclose()
        await engine.dispose()


async def _ready(pool: InferencePool) -> bool:
    return pool.ready()
