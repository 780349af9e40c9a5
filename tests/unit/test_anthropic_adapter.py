"""The Anthropic adapter over HTTP: headers, errors, rate-limit signals and streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from broker.config import DeploymentConfig
from broker.errors import ProviderRejected, ProviderRetriable, UnsupportedParameter
from schemas import ChatCompletion, ChatCompletionRequest, EmbeddingRequest
from workers.providers.anthropic import AnthropicProvider

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
UPSTREAM = "claude-sonnet-4-20250514"
Handler = Callable[[httpx.Request], httpx.Response]
RATE_LIMIT_HEADERS = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:01Z",
    "anthropic-ratelimit-input-tokens-remaining": "39000",
}


def _body(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "logical", "messages": [{"role": "user", "content": "Hello"}], **fields})


def _adapter(handler: Handler, api_key: str | None = "sk-ant-test",
             **config: Any) -> AnthropicProvider:
    deployment = DeploymentConfig.model_validate(
        {"provider": "anthropic", "model": UPSTREAM, **config})
    return AnthropicProvider(httpx.MockTransport(handler), "claude-1", deployment, api_key)


def _answer(name: str, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    content = (FIXTURES / name).read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)
    return handler


def _error(status: int, kind: str, message: str,
           headers: dict[str, str] | None = None) -> Handler:
    envelope = {"type": "error", "error": {"type": kind, "message": message},
                "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=envelope, headers=headers)
    return handler


async def test_calls_the_messages_api_with_anthropics_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _answer("message_text.json")(request)

    await _adapter(handler).complete(_body(max_tokens=64), timeout_s=5)
    [request] = seen
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert orjson.loads(request.content) == {
        "model": UPSTREAM, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}


async def test_base_url_api_version_and_max_output_tokens_come_from_the_config() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _answer("message_text.json")(request)

    adapter = _adapter(handler, base_url="http://gateway.test/anthropic/",
                       api_version="2024-01-01", max_output_tokens=300)
    await adapter.complete(_body(), timeout_s=5)
    assert str(seen[0].url) == "http://gateway.test/anthropic/v1/messages"
    assert seen[0].headers["anthropic-version"] == "2024-01-01"
    assert orjson.loads(seen[0].content)["max_tokens"] == 300


async def test_answers_in_the_unified_form_with_request_id_and_rate_limit_headers() -> None:
    adapter = _adapter(_answer("message_tool_use.json", headers={
        "request-id": "req_018EeWyXxfu5pfWkrYcMdjWG", **RATE_LIMIT_HEADERS}))
    response = await adapter.complete(_body(), timeout_s=5)
    completion = response.completion
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 21 + 188086
    assert response.provider_request_id == "req_018EeWyXxfu5pfWkrYcMdjWG"
    assert dict(response.rate_limit_headers) == RATE_LIMIT_HEADERS
    assert adapter.name == "anthropic" and adapter.deployment == "claude-1"


async def test_a_request_anthropic_cannot_express_is_refused_before_any_call() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _answer("message_text.json")(request)

    adapter = _adapter(handler)
    with pytest.raises(UnsupportedParameter) as caught:
        await adapter.complete(_body(n=2), timeout_s=5)
    assert caught.value.param == "n"
    with pytest.raises(UnsupportedParameter):
        await adapter.stream(_body(logprobs=True), timeout_s=5, on_chunk=_discard)
    assert calls == []


async def test_drop_params_of_the_deployment_apply() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _answer("message_text.json")(request)

    await _adapter(handler, drop_params=["logit_bias"]).complete(
        _body(logit_bias={"1": 5}), timeout_s=5)
    assert "logit_bias" not in orjson.loads(seen[0].content)


async def test_a_rate_limit_is_retriable_with_retry_after_and_its_headers() -> None:
    headers = {"retry-after": "12", **RATE_LIMIT_HEADERS}
    adapter = _adapter(_error(429, "rate_limit_error", "Number of request tokens has "
                              "exceeded your per-minute rate limit", headers))
    with pytest.raises(ProviderRetriable) as caught:
        await adapter.complete(_body(), timeout_s=5)
    assert caught.value.status_code == 429
    assert caught.value.retry_after_s == 12
    assert caught.value.rate_limit_headers == {**RATE_LIMIT_HEADERS, "retry-after": "12"}
    assert "rate_limit_error: Number of request tokens" in str(caught.value)


@pytest.mark.parametrize(("status", "kind"), [
    (529, "overloaded_error"), (500, "api_error"), (503, "overloaded_error"),
    (504, "timeout_error"), (408, "timeout_error"), (409, "conflict")])
async def test_transient_statuses_are_retriable(status: int, kind: str) -> None:
    with pytest.raises(ProviderRetriable) as caught:
        await _adapter(_error(status, kind, "try later")).complete(_body(), timeout_s=5)
    assert caught.value.status_code == status


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_deployment_that_refuses_our_key_or_model_is_failed_over_quietly(
    status: int,
) -> None:
    adapter = _adapter(_error(status, "authentication_error", "invalid x-api-key sk-ant-te"))
    with pytest.raises(ProviderRetriable) as caught:
        await adapter.complete(_body(), timeout_s=5)
    assert caught.value.status_code == status
    assert "sk-ant" not in str(caught.value)


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_refused_request_is_rejected_with_anthropics_message(status: int) -> None:
    message = 'messages: roles must alternate between "user" and "assistant"'
    adapter = _adapter(_error(status, "invalid_request_error", message))
    with pytest.raises(ProviderRejected) as caught:
        await adapter.complete(_body(), timeout_s=5)
    assert not isinstance(caught.value, ProviderRetriable)
    assert caught.value.status_code == status
    assert message in str(caught.value)


@pytest.mark.parametrize("content", [b"not json", b'{"type": "message"}', b"[]"])
async def test_a_success_body_that_is_not_a_message_is_retriable(content: bytes) -> None:
    adapter = _adapter(lambda request: httpx.Response(200, content=content))
    with pytest.raises(ProviderRetriable, match="not an Anthropic message"):
        await adapter.complete(_body(), timeout_s=5)


async def test_transport_failures_are_retriable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ProviderRetriable, match="unreachable"):
        await _adapter(handler).complete(_body(), timeout_s=5)
    with pytest.raises(ProviderRetriable, match="unreachable"):
        await _adapter(handler).stream(_body(), timeout_s=5, on_chunk=_discard)


async def test_embeddings_are_unsupported() -> None:
    adapter = _adapter(_answer("message_text.json"))
    with pytest.raises(UnsupportedParameter) as caught:
        await adapter.embed(EmbeddingRequest.model_validate(
            {"model": "logical", "input": "x"}), timeout_s=5)
    assert caught.value.param == "model"


# --- streams ---------------------------------------------------------------------------


async def _discard(chunk: dict[str, Any]) -> None:
    pass


async def test_a_stream_hands_on_openai_chunks_and_returns_their_completion() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=(FIXTURES / "stream_tool_use.sse").read_bytes(),
                              headers={"content-type": "text/event-stream",
                                       "request-id": "req_stream_1", **RATE_LIMIT_HEADERS})

    chunks: list[dict[str, Any]] = []

    async def collect(chunk: dict[str, Any]) -> None:
        chunks.append(chunk)

    response = await _adapter(handler).stream(_body(), timeout_s=5, on_chunk=collect)
    payload = orjson.loads(seen[0].content)
    assert payload["stream"] is True
    assert seen[0].headers["accept"] == "text/event-stream"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 89
    completion = response.completion
    [call] = completion.choices[0].message.tool_calls or []  # type: ignore[union-attr]
    assert call.function is not None
    assert json.loads(call.function.arguments or "") == {
        "location": "San Francisco, CA", "unit": "fahrenheit"}
    assert completion.usage is not None and completion.usage.prompt_tokens == 472
    assert response.provider_request_id == "req_stream_1"
    assert dict(response.rate_limit_headers) == RATE_LIMIT_HEADERS


async def test_chunks_are_handed_on_as_they_arrive() -> None:
    events = (FIXTURES / "stream_text.sse").read_text().split("\n\n")
    handed_on: list[dict[str, Any]] = []

    async def body() -> AsyncIterator[bytes]:
        for number, event in enumerate(events):
            if number == 4:  # after message_start, a block start, a ping and "Hello"
                assert [chunk["choices"][0]["delta"].get("content")
                        for chunk in handed_on] == ["", "Hello"]
            yield (event + "\n\n").encode()

    async def collect(chunk: dict[str, Any]) -> None:
        handed_on.append(chunk)

    adapter = _adapter(lambda request: httpx.Response(200, content=body()))
    response = await adapter.stream(_body(), timeout_s=5, on_chunk=collect)
    assert response.completion.choices[0].message.content == "Hello!"  # type: ignore[union-attr]


async def test_a_stream_that_ends_before_message_stop_is_retriable() -> None:
    cut = (FIXTURES / "stream_text.sse").read_text().split("event: message_delta")[0]
    adapter = _adapter(lambda request: httpx.Response(200, content=cut.encode()))
    with pytest.raises(ProviderRetriable, match="before message_stop"):
        await adapter.stream(_body(), timeout_s=5, on_chunk=_discard)


async def test_an_error_event_in_the_stream_is_retriable() -> None:
    text = (FIXTURES / "stream_text.sse").read_text().split("event: content_block_stop")[0]
    text += ('event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
             '"message": "Overloaded"}}\n\n')
    handed_on: list[dict[str, Any]] = []

    async def collect(chunk: dict[str, Any]) -> None:
        handed_on.append(chunk)

    adapter = _adapter(lambda request: httpx.Response(200, content=text.encode()))
    with pytest.raises(ProviderRetriable, match="overloaded_error"):
        await adapter.stream(_body(), timeout_s=5, on_chunk=collect)
    assert handed_on  # the caller knows chunks went out before it broke off


async def test_a_refused_stream_raises_before_any_chunk() -> None:
    adapter = _adapter(_error(529, "overloaded_error", "Overloaded", {"retry-after": "3"}))
    with pytest.raises(ProviderRetriable) as caught:
        await adapter.stream(_body(), timeout_s=5, on_chunk=_discard)
    assert (caught.value.status_code, caught.value.retry_after_s) == (529, 3)
    adapter = _adapter(_error(400, "invalid_request_error", "max_tokens: too large"))
    with pytest.raises(ProviderRejected, match="max_tokens: too large"):
        await adapter.stream(_body(), timeout_s=5, on_chunk=_discard)
