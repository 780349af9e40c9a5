"""/readyz on real Kafka and PostgreSQL: 503 until consumers own their partitions, then 200;
503 naming PostgreSQL when it is away; ingress ready once its stack runs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.ops import OpsServer, Readiness, flag
from broker.settings import DatabaseSettings, KafkaSettings, LedgerSettings, WorkerSettings
from broker.stores.database import create_engine
from sluice.processes import _readiness
from tests.integration.stack import eventually, running_stack
from tests.integration.test_failover import two_deployments
from workers.inference import InferencePool, NoResultsOfRecord
from workers.ledger import Ledger
from workers.providers import build_provider

pytestmark = [pytest.mark.integration, pytest.mark.dev_broker]


async def _readyz(server: OpsServer) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/readyz")
    return response.status_code, dict(response.json())


def _is_ready(server: OpsServer) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await _readyz(server))[0] == 200
    return check


async def test_a_worker_is_ready_once_its_consumers_own_their_partitions(
        kafka_settings: KafkaSettings, engine: AsyncEngine) -> None:
    config = two_deployments()
    providers = {name: build_provider(name, deployment, httpx.MockTransport(
        lambda _: httpx.Response(500))) for name, deployment in config.deployments.items()}
    pool = InferencePool(kafka_settings, WorkerSettings(), config, ["gpt-4o-mini"],
                         providers, NoResultsOfRecord())
    readiness = _readiness(engine, kafka_settings, consumers=flag(
        pool.ready, "request consumers have not joined their groups yet"))
    stop = asyncio.Event()
    async with OpsServer("127.0.0.1", 0, readiness=readiness,
                         snapshot=pool.state) as server:
        status, body = await _readyz(server)
        assert status == 503
        assert body["checks"] == {
            "kafka": "ok", "postgres": "ok",
            "kafka_consumers": "request consumers have not joined their groups yet"}
        task = asyncio.create_task(pool.run(stop))
        try:
            await eventually(_is_ready(server), 60)
            assert (await _readyz(server))[1] == {"ready": True, "checks": {
                "kafka": "ok", "kafka_consumers": "ok", "postgres": "ok"}}
        finally:
            stop.set()
            await asyncio.wait_for(task, 40)


async def test_the_ledger_is_ready_once_kafka_lists_its_consumer_in_its_group(
        kafka_settings: KafkaSettings, engine: AsyncEngine) -> None:
    client_id = f"sluice-ledger-test-{uuid.uuid4().hex[:8]}"
    ledger = Ledger(kafka_settings, LedgerSettings(), engine, client_id=client_id)
    readiness = _readiness(engine, kafka_settings, group=(ledger.group_id, client_id))
    stop = asyncio.Event()
    async with OpsServer("127.0.0.1", 0, readiness=readiness) as server:
        status, body = await _readyz(server)
        assert status == 503
        assert body["checks"]["postgres"] == "ok"
        assert ledger.group_id in body["checks"]["kafka"]
        task = asyncio.create_task(ledger.run(stop))
        try:
            await eventually(_is_ready(server), 60)
        finally:
            stop.set()
            await asyncio.wait_for(task, 40)


async def test_readyz_names_postgresql_when_it_is_away(kafka_settings: KafkaSettings) -> None:
    # Port 1 on loopback: nothing listens there.
    away = create_engine(DatabaseSettings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/sluice"))
    try:
        readiness: Readiness = _readiness(away, kafka_settings)
        async with OpsServer("127.0.0.1", 0, readiness=readiness) as server:
            status, body = await _readyz(server)
        assert status == 503
        assert body["checks"]["kafka"] == "ok"
        assert "127.0.0.1:1/sluice" in body["checks"]["postgres"]
    finally:
        await away.dispose()


async def test_ingress_is_ready_when_its_stack_runs(kafka_settings: KafkaSettings,
                                                    database_url: str) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        response = await stack.client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"ready": True, "checks": {
            "kafka": "ok", "kafka_replies": "ok", "postgres": "ok"}}
        assert (await stack.client.get("/livez")).json() == {"status": "ok"}
