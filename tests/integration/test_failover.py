"""Failover, breakers, retries and dead letters on real Kafka and PostgreSQL, with faults
injected into the simulated provider."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.config import SluiceConfig, parse_config
from broker.kafka import DLQ_REASON, new_consumer
from broker.settings import KafkaSettings
from schemas import Topics
from simulator import Faults, SimulatorSettings
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack

pytestmark = pytest.mark.integration

DOWN = Faults(error_rate=1.0, error_statuses=(503,))


def two_deployments(**model: Any) -> SluiceConfig:
    """`gpt-4o-mini` served by `first` (upstream `up-first`), then `second` (`up-second`)."""
    deployment = {"provider": "openai", "base_url": f"{SIM_BASE}/v1", "timeout_s": 0.3}
    return parse_config({
        "models": {"gpt-4o-mini": {"deployments": ["first", "second"], **model}},
        "deployments": {name: {**deployment, "model": f"up-{name}"}
                        for name in ("first", "second")},
        "circuit_breaker": {"consecutive_failures": 10, "cooldown_s": 0.5},
    })


async def submit(stack: Stack, count: int, prompt: str = "hello") -> list[str]:
    """Submit `count` async requests; their ids."""
    async def one(index: int) -> str:
        response = await stack.client.post("/v1/requests", headers=stack.auth, json={
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"{prompt} {index}"}]})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    return list(await asyncio.gather(*(one(index) for index in range(count))))


async def sim_stats(stack: Stack) -> dict[str, Any]:
    stats: dict[str, Any] = (await stack.simulator.get("/stats")).json()
    return stats


async def test_first_deployment_down_every_request_succeeds_through_the_second(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = two_deployments()
    config = parse_config({**config.model_dump(mode="json"),
                           "circuit_breaker": {"consecutive_failures": 3, "cooldown_s": 60}})
    simulator = SimulatorSettings(model_faults={"up-first": DOWN})
    async with running_stack(kafka_settings, database_url, config=config,
                             simulator=simulator) as stack:
        await submit(stack, 30)
        await eventually(lambda: stack.scalar(
            "select count(*) = 30 from requests where status = 'succeeded'"), 30)
        calls_to_first = (await sim_stats(stack))["requests_by_model"]["up-first"]
        # Now the breaker is open: waiting callers are not sent to the dead deployment.
        for index in range(5):
            response = await stack.client.post("/v1/chat/completions", headers=stack.auth,
                                               json={"model": "gpt-4o-mini", "messages": [
                                                   {"role": "user", "content": f"s{index}"}]})
            assert response.status_code == 200, response.text
        stats = await sim_stats(stack)
        assert stats["requests_by_model"]["up-first"] == calls_to_first
        assert stats["succeeded"] == 35
        await eventually(lambda: stack.scalar(  # the ledger records the last ones meanwhile
            "select count(*) = 35 from usage_events where deployment = 'second'"))
        assert await stack.scalar("select count(*) from usage_events") == 35


async def test_random_faults_on_both_every_request_ends_and_usage_matches_the_provider(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    requests = 120
    config = two_deployments(retry={"max_attempts": 30, "initial_backoff_s": 0.05,
                                    "max_backoff_s": 0.2})
    faults = Faults(error_rate=0.2, error_statuses=(500, 502, 503, 429), timeout_rate=0.03,
                    hang_s=5)
    simulator = SimulatorSettings(model_faults={"up-first": faults, "up-second": faults}, seed=4)
    async with running_stack(kafka_settings, database_url, config=config,
                             simulator=simulator) as stack:
        await submit(stack, requests)
        await eventually(lambda: stack.scalar(
            f"select count(*) = {requests} from requests where status <> 'queued'"), 60)
        stats = await sim_stats(stack)
        assert sum(stats["injected"].values()) > requests * 0.2  # the faults did happen
        assert stats["requests"] > stats["succeeded"]
        succeeded = await stack.scalar("select count(*) from requests where status = 'succeeded'")
        assert succeeded == requests
        assert stats["succeeded"] >= requests
        await eventually(lambda: stack.scalar(
            f"select count(*) = {stats['succeeded']} from usage_events"))
        assert await stack.scalar(
            "select count(*) from (select request_id from usage_events group by request_id "
            "having count(*) > 1) d") == 0
        # Some requests needed a delayed retry: their billed call has a later attempt number.
        assert await stack.scalar("select max(attempt) from usage_events") >= 2


async def test_exhausted_request_fails_and_is_dead_lettered(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = two_deployments(retry={"max_attempts": 4, "initial_backoff_s": 0.05})
    simulator = SimulatorSettings(model_faults={"up-first": DOWN, "up-second": DOWN})
    async with running_stack(kafka_settings, database_url, config=config,
                             simulator=simulator) as stack:
        [request_id] = await submit(stack, 1)
        await eventually(lambda: stack.scalar(
            "select status from requests where id = :id and status <> 'queued'", id=request_id))
        assert await stack.scalar("select status from requests where id = :id",
                                  id=request_id) == "failed"
        error = await stack.scalar("select result->'error'->>'message' from requests "
                                   "where id = :id", id=request_id)
        assert "4 attempts failed" in error and "503" in error
        assert (await sim_stats(stack))["requests"] == 4  # two deliveries, two deployments
        assert await stack.scalar("select count(*) from usage_events") == 0
        consumer = new_consumer(kafka_settings, client_id="dlq", group_id=None)
        await consumer.start()
        consumer.subscribe([Topics(kafka_settings.topic_prefix).dead_letter])
        try:
            batch = await consumer.getmany(timeout_ms=5000)
        finally:
            await consumer.stop()
        [entry] = [record for records in batch.values() for record in records]
        assert entry.key == request_id.encode()
        assert dict(entry.headers)[DLQ_REASON].decode().startswith("retries exhausted")
