"""The processor across providers: a request one deployment's API cannot express goes to
the next, unbilled; a value no adapter can read is the caller's 400; an adapter's bug ends
the request instead of stalling its partition.

The providers are the real Anthropic and OpenAI-compatible adapters talking to the real
simulator in-process (httpx ASGI transport).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from broker.clock import FakeClock
from broker.config import SluiceConfig, parse_config
from schemas import ChatCompletionRequest, InferenceRequest, RequestStatus
from simulator import SimulatorSettings, create_simulator_app
from workers.inference.breakers import BreakerBoard
from workers.inference.processor import RequestProcessor
from workers.providers import build_provider

NOW = datetime(2030, 1, 1, tzinfo=UTC)
ANTHROPIC = {"provider": "anthropic", "base_url": "http://sim", "model": "claude-sim"}
OPENAI = {"provider": "openai", "base_url": "http://sim/v1", "model": "gpt-sim"}


def _config(*chain: str) -> SluiceConfig:
    kinds = {"claude": ANTHROPIC, "gpt": OPENAI}
    return parse_config({
        "models": {"m": {"deployments": list(chain)}},
        "deployments": {name: kinds[name] for name in chain},
        "circuit_breaker": {"consecutive_failures": 2, "cooldown_s": 30},
    })


@pytest.fixture
async def make() -> AsyncIterator[Callable[[SluiceConfig], tuple[RequestProcessor, Any]]]:
    transports: list[httpx.AsyncBaseTransport] = []

    def build(config: SluiceConfig) -> tuple[RequestProcessor, Any]:
        app = create_simulator_app(SimulatorSettings(seed=1))
        transport = httpx.ASGITransport(app=app)
        transports.append(transport)
        providers = {name: build_provider(name, deployment, transport, api_key="sim-key")
                     for name, deployment in config.deployments.items()}
        breakers = BreakerBoard(config.circuit_breaker, config.deployments, FakeClock())
        processor = RequestProcessor(config, providers, lambda: NOW, breakers=breakers,
                                     rng=random.Random(1))
        return processor, app.state

    yield build
    for transport in transports:
        await transport.aclose()


def _request(**params: Any) -> InferenceRequest:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **params})
    return InferenceRequest(id="req_1", model="m", body=body, created_at=NOW)


async def test_a_parameter_anthropic_cannot_express_is_served_by_the_next_provider(
    make: Any,
) -> None:
    processor, sim = make(_config("claude", "gpt"))
    outcome = await processor.process(_request(n=2))
    result = outcome.result
    assert result is not None and result.status is RequestStatus.SUCCEEDED
    assert (result.deployment, result.provider, result.attempts) == ("gpt", "openai", 1)
    assert len(result.completion.choices) == 2  # type: ignore[union-attr]
    # Anthropic was never called, and only the call made is billed.
    assert sim.requests_by_model == {"gpt-sim": 1}
    assert [(usage.deployment, usage.provider) for usage in outcome.usage] == [
        ("gpt", "openai")]


async def test_no_deployment_able_to_express_it_is_a_400_naming_the_parameter(
    make: Any,
) -> None:
    processor, sim = make(_config("claude"))
    outcome = await processor.process(_request(n=2))
    result = outcome.result
    assert result is not None and result.status is RequestStatus.FAILED
    assert result.error is not None
    assert (result.error.type, result.error.code, result.error.param) == (
        "invalid_request_error", "unsupported_parameter", "n")
    assert sim.requests == 0 and outcome.usage == []


async def test_while_the_deployment_that_can_is_unavailable_the_request_is_retried(
    make: Any,
) -> None:
    processor, sim = make(_config("claude", "gpt"))
    for _ in range(2):  # two failures in a row open gpt's breaker
        processor.breakers["gpt"].record_failure()
    outcome = await processor.process(_request(n=2))
    # Not a 400: gpt could answer it once it is back.
    assert outcome.result is None and outcome.retry is not None
    assert sim.requests == 0


async def test_a_value_of_the_wrong_shape_is_the_callers_400_not_a_crash(make: Any) -> None:
    processor, sim = make(_config("claude"))
    outcome = await processor.process(_request(stop=5))
    result = outcome.result
    assert result is not None and result.status is RequestStatus.FAILED
    assert result.error is not None and result.error.type == "invalid_request_error"
    assert "wrong shape" in result.error.message
    assert sim.requests == 0


async def test_an_adapter_bug_ends_the_request_with_a_server_error(make: Any) -> None:
    processor, _ = make(_config("gpt"))

    class Broken:
        name, deployment = "openai", "gpt"

        async def complete(self, body: Any, *, timeout_s: float) -> Any:
            raise RuntimeError("a bug")

    processor._providers = {"gpt": Broken()}  # type: ignore[dict-item]
    outcome = await processor.process(_request())
    result = outcome.result
    assert result is not None and result.status is RequestStatus.FAILED
    assert result.error is not None
    assert (result.error.type, result.error.code) == ("server_error", "adapter_error")
