"""The processor's failover, breakers, retries, deadlines and cancellation.

Providers are the real OpenAI-compatible adapter talking to the real simulator in-process
(httpx ASGI transport), with faults injected per upstream model.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from broker.clock import FakeClock
from broker.config import SluiceConfig, parse_config
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest, RequestStatus
from simulator import Faults, SimulatorSettings, create_simulator_app
from workers.inference.breakers import BreakerBoard
from workers.inference.processor import RequestProcessor
from workers.providers import build_provider

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DOWN = Faults(error_rate=1.0, error_statuses=(503,))


def _config(**model: Any) -> SluiceConfig:
    deployments = {
        name: {"provider": "openai", "base_url": "http://sim/v1", "model": f"up-{name}",
               "timeout_s": 0.5}
        for name in ("a", "b")
    }
    return parse_config({
        "models": {"m": {"deployments": ["a", "b"], **model}},
        "deployments": deployments,
        "circuit_breaker": {"consecutive_failures": 2, "cooldown_s": 30},
    })


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., tuple[RequestProcessor, Any]]]:
    transports: list[httpx.AsyncBaseTransport] = []

    def build(
        config: SluiceConfig, faults: dict[str, Faults], clock: Callable[[], datetime] = lambda: NOW
    ) -> tuple[RequestProcessor, Any]:
        app = create_simulator_app(SimulatorSettings(model_faults=faults, seed=1))
        transport = httpx.ASGITransport(app=app)
        transports.append(transport)
        providers = {n: build_provider(n, d, transport) for n, d in config.deployments.items()}
        breakers = BreakerBoard(config.circuit_breaker, config.deployments, FakeClock())
        processor = RequestProcessor(config, providers, clock, breakers=breakers,
                                     rng=random.Random(1))
        return processor, app.state

    yield build
    for transport in transports:
        await transport.aclose()


def _request(**fields: Any) -> InferenceRequest:
    body = ChatCompletionRequest(model="m", messages=[ChatMessage(role="user", content="hi")])
    values: dict[str, Any] = {"id": "req_1", "model": "m", "body": body, "created_at": NOW}
    return InferenceRequest.model_validate({**values, **fields})


async def test_retriable_failure_fails_over_and_usage_carries_the_attempt(make: Any) -> None:
    processor, sim = make(_config(), {"up-a": DOWN})
    outcome = await processor.process(_request(attempt=2))
    assert outcome.result is not None and outcome.result.status is RequestStatus.SUCCEEDED
    assert outcome.result.deployment == "b" and outcome.result.attempts == 4
    assert [(u.deployment, u.attempt) for u in outcome.usage] == [("b", 3)]
    assert sim.requests_by_model == {"up-a": 1, "up-b": 1}


async def test_a_deployment_refusing_our_credentials_fails_over_and_trips_its_breaker(
    make: Any,
) -> None:
    processor, sim = make(_config(), {"up-a": Faults(error_rate=1.0, error_statuses=(401,))})
    for index in range(3):
        outcome = await processor.process(_request(id=f"req_{index}"))
        assert outcome.result is not None and outcome.result.status is RequestStatus.SUCCEEDED
        assert outcome.result.deployment == "b"
    # Two 401s in a row open a's breaker (consecutive_failures: 2): the third skips it.
    assert sim.requests_by_model == {"up-a": 2, "up-b": 3}


async def test_rejection_ends_the_request_without_failover(make: Any) -> None:
    processor, sim = make(_config(), {"up-a": Faults(error_rate=1.0, error_statuses=(400,))})
    outcome = await processor.process(_request())
    assert outcome.result is not None and outcome.result.status is RequestStatus.FAILED
    assert outcome.result.error is not None and outcome.result.error.code == "provider_400"
    assert sim.requests_by_model == {"up-a": 1} and outcome.usage == []


async def test_open_breaker_is_skipped(make: Any) -> None:
    processor, sim = make(_config(), {"up-a": DOWN})
    for index in range(5):
        outcome = await processor.process(_request(id=f"r{index}"))
        assert outcome.result is not None and outcome.result.status is RequestStatus.SUCCEEDED
    assert sim.requests_by_model["up-a"] == 2  # then its breaker opened
    assert processor.breakers.snapshot()["a"]["state"] == "open"


async def test_every_deployment_failing_schedules_a_retry(make: Any) -> None:
    config = _config(retry={"max_attempts": 5, "initial_backoff_s": 2, "max_backoff_s": 8})
    processor, _ = make(config, {"up-a": DOWN, "up-b": DOWN})
    outcome = await processor.process(_request())
    assert outcome.result is None and outcome.retry is not None
    assert outcome.retry.request.attempt == 2
    assert NOW + timedelta(seconds=1) <= outcome.retry.due <= NOW + timedelta(seconds=2)
    assert "503" in outcome.retry.reason


async def test_exhausted_retries_fail_and_dead_letter(make: Any) -> None:
    processor, _ = make(_config(retry={"max_attempts": 4}), {"up-a": DOWN, "up-b": DOWN})
    outcome = await processor.process(_request(attempt=2))
    assert outcome.retry is None and outcome.result is not None
    assert outcome.result.status is RequestStatus.FAILED and outcome.result.attempts == 4
    assert outcome.dead_letter_reason is not None
    assert outcome.dead_letter_reason.startswith("retries exhausted: 4 attempts")


async def test_total_time_limit_ends_retries(make: Any) -> None:
    processor, _ = make(_config(retry={"max_total_s": 30}), {"up-a": DOWN, "up-b": DOWN},
                        clock=lambda: NOW + timedelta(seconds=29.9))
    outcome = await processor.process(_request())
    assert outcome.result is not None and outcome.result.status is RequestStatus.FAILED
    assert "no retry within 30s" in (outcome.dead_letter_reason or "")


async def test_retry_that_would_land_after_the_deadline_expires_now(make: Any) -> None:
    processor, _ = make(_config(), {"up-a": DOWN, "up-b": DOWN})
    outcome = await processor.process(_request(deadline=NOW + timedelta(seconds=0.1)))
    assert outcome.result is not None and outcome.result.status is RequestStatus.EXPIRED


async def test_lane_default_deadline_expires_without_a_provider_call(make: Any) -> None:
    config = parse_config({**_config().model_dump(mode="json"),
                           "deadlines": {"interactive_s": 10}})
    processor, sim = make(config, {}, clock=lambda: NOW + timedelta(seconds=11))
    outcome = await processor.process(_request())
    assert outcome.result is not None and outcome.result.status is RequestStatus.EXPIRED
    assert sim.requests == 0


async def test_cancelled_request_is_answered_without_a_call(make: Any) -> None:
    processor, sim = make(_config(), {})
    processor.cancelled.add("req_1", "other-tenant")
    outcome = await processor.process(_request())  # another tenant's marker: not cancelled
    assert outcome.result is not None and outcome.result.status is RequestStatus.SUCCEEDED
    processor.cancelled.add("req_1", "default")
    outcome = await processor.process(_request())
    assert outcome.result is not None and outcome.result.status is RequestStatus.CANCELLED
    assert sim.requests == 1


async def test_hung_call_times_out_and_fails_over(make: Any) -> None:
    processor, sim = make(_config(), {"up-a": Faults(timeout_rate=1.0, hang_s=5)})
    outcome = await processor.process(_request())
    assert outcome.result is not None and outcome.result.deployment == "b"
    assert sim.injected == {"timeout": 1}
