"""The Azure OpenAI adapter: Azure's URL, key header and api-version; Azure's errors.

Checked twice: the exact request against a recording transport, and whole calls against
the simulator's Azure endpoints (which refuse what Azure refuses).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from broker.clock import FakeClock
from broker.config import DeploymentConfig
from broker.errors import ProviderRejected, ProviderRetriable
from schemas import ChatCompletion, ChatCompletionRequest, EmbeddingRequest
from simulator import SimulatorSettings, create_simulator_app
from workers.providers.azure_openai import DEFAULT_API_VERSION, AzureOpenAIProvider

DEPLOYMENT = "gpt4o-eastus"


def _config(**fields: Any) -> DeploymentConfig:
    return DeploymentConfig.model_validate({
        "provider": "azure-openai", "model": DEPLOYMENT,
        "base_url": "https://contoso.openai.azure.com", **fields})


def _body(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({
        "model": "logical", "messages": [{"role": "user", "content": "Name a river."}],
        **fields})


async def _sent(config: DeploymentConfig, api_key: str | None = "azure-key") -> httpx.Request:
    """The request the adapter sends for one chat completion."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
            "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "The Nile."}}]})

    async with httpx.MockTransport(answer) as transport:
        adapter = AzureOpenAIProvider(transport, "azure-1", config, api_key)
        await adapter.complete(_body(), timeout_s=5)
    return seen[0]


async def test_sends_azures_url_key_header_and_default_version() -> None:
    request = await _sent(_config())
    assert str(request.url) == (f"https://contoso.openai.azure.com/openai/deployments/"
                                f"{DEPLOYMENT}/chat/completions?api-version=2024-10-21")
    assert DEFAULT_API_VERSION == "2024-10-21"
    assert request.headers["api-key"] == "azure-key"
    assert "authorization" not in request.headers
    assert request.headers["host"] == "contoso.openai.azure.com"
    assert orjson.loads(request.content)["messages"][0]["content"] == "Name a river."


async def test_configured_version_and_an_endpoint_ending_in_openai() -> None:
    request = await _sent(_config(base_url="https://contoso.openai.azure.com/openai/",
                                  api_version="2025-01-01-preview"), api_key=None)
    assert request.url.path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    assert request.url.params["api-version"] == "2025-01-01-preview"
    assert "api-key" not in request.headers


@pytest.fixture
async def simulated() -> AsyncIterator[tuple[AzureOpenAIProvider, httpx.AsyncBaseTransport]]:
    app = create_simulator_app(SimulatorSettings(rpm=2), clock=FakeClock(0.0))
    async with httpx.ASGITransport(app=app) as transport:
        yield AzureOpenAIProvider(transport, "azure-1", _config(base_url="http://sim"),
                                  "azure-key"), transport


async def test_completes_streams_and_embeds_against_the_simulator(
        simulated: tuple[AzureOpenAIProvider, httpx.AsyncBaseTransport]) -> None:
    adapter, _ = simulated
    assert adapter.name == "azure-openai"
    answered = await adapter.complete(_body(), timeout_s=5)
    assert answered.completion.model == DEPLOYMENT
    assert answered.rate_limit_headers["x-ratelimit-remaining-requests"] == "1"
    chunks: list[dict[str, Any]] = []

    async def collect(chunk: dict[str, Any]) -> None:
        chunks.append(chunk)

    streamed = await adapter.stream(_body(), timeout_s=5, on_chunk=collect)
    whole, assembled = answered.completion, streamed.completion
    assert isinstance(whole, ChatCompletion) and isinstance(assembled, ChatCompletion)
    assert assembled.choices[0].message.content == whole.choices[0].message.content
    assert chunks and assembled.usage == whole.usage
    refused = await _refusal(adapter.embed(
        EmbeddingRequest.model_validate({"model": "e", "input": "river"}), timeout_s=5))
    assert isinstance(refused, ProviderRetriable)
    assert (refused.status_code, refused.retry_after_s) == (429, 60.0)
    assert refused.rate_limit_headers["retry-after-ms"] == "60000"
    assert "exceeded the rate limit" in str(refused)


async def _refusal(call: Any) -> Exception:
    try:
        await call
    except (ProviderRetriable, ProviderRejected) as exc:
        return exc
    raise AssertionError("the call was not refused")


async def test_azures_refusals_become_provider_errors(
        simulated: tuple[AzureOpenAIProvider, httpx.AsyncBaseTransport]) -> None:
    _, transport = simulated
    keyless = AzureOpenAIProvider(transport, "azure-1", _config(base_url="http://sim"))
    denied = await _refusal(keyless.complete(_body(), timeout_s=5))
    # A key Azure refuses is the deployment's fault: retriable elsewhere, not the caller's.
    assert isinstance(denied, ProviderRetriable) and denied.status_code == 401
    keyed = AzureOpenAIProvider(transport, "azure-1", _config(base_url="http://sim"), "k")
    invalid = await _refusal(keyed.complete(_body(temperature=5), timeout_s=5))
    assert isinstance(invalid, ProviderRejected) and invalid.status_code == 400
    assert "temperature" in str(invalid)
