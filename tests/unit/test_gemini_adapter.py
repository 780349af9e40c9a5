"""The Gemini adapter against a fake Google endpoint (httpx.MockTransport): what it sends,
how it reads answers and streams, and how Google's errors become sluicegate's."""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from broker.config import DeploymentConfig
from broker.errors import ProviderRejected, ProviderRetriable, UnsupportedParameter
from schemas import ChatCompletion, ChatCompletionRequest, EmbeddingRequest, EmbeddingResponse
from simulator import SimulatorSettings, create_simulator_app
from workers.providers.gemini import GeminiProvider

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gemini"
Handler = Callable[[httpx.Request], httpx.Response]


def _config(**fields: Any) -> DeploymentConfig:
    return DeploymentConfig.model_validate(
        {"provider": "gemini", "model": "gemini-2.5-flash", **fields})


def _adapter(handler: Handler, api_key: str | None = "AIza-test", **config: Any
             ) -> GeminiProvider:
    return GeminiProvider(httpx.MockTransport(handler), "gem-1", _config(**config), api_key)


def _body(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "chat", "messages": [{"role": "user", "content": "A haiku?"}], **fields})


def _fixture_answer(name: str, status: int = 200, **headers: str) -> Handler:
    content = (FIXTURES / name).read_bytes()
    return lambda request: httpx.Response(status, content=content, headers=headers)


class _Recorder:
    """Answers with `answer` and keeps every request it saw."""

    def __init__(self, answer: Handler):
        self.requests: list[httpx.Request] = []
        self._answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._answer(request)


async def test_calls_generate_content_with_the_key_header_and_the_translated_body() -> None:
    upstream = _Recorder(_fixture_answer("text_answer.json"))
    response = await _adapter(upstream).complete(_body(temperature=0.5), timeout_s=5)
    (request,) = upstream.requests
    assert str(request.url) == ("https://generativelanguage.googleapis.com/v1beta/models/"
                                "gemini-2.5-flash:generateContent")
    assert request.headers["x-goog-api-key"] == "AIza-test"
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert request.extensions["timeout"] == httpx.Timeout(5).as_dict()
    assert orjson.loads(request.content) == {
        "contents": [{"role": "user", "parts": [{"text": "A haiku?"}]}],
        "generationConfig": {"temperature": 0.5}}
    assert isinstance(response.completion, ChatCompletion)
    assert response.completion.choices[0].message.content == (
        "Grey waves fold on stone, salt wind carries gull voices.")
    assert response.provider_request_id == "mD9xaK2vBMKd0-kP4qrX2Qo"


async def test_base_url_api_version_and_a_full_model_name_are_honoured() -> None:
    upstream = _Recorder(_fixture_answer("text_answer.json"))
    adapter = _adapter(upstream, base_url="http://gemini.test/", api_version="v1",
                       model="tunedModels/haiku-7")
    await adapter.complete(_body(), timeout_s=5)
    assert str(upstream.requests[0].url) == (
        "http://gemini.test/v1/tunedModels/haiku-7:generateContent")


async def test_an_inexpressible_request_is_refused_before_any_call() -> None:
    upstream = _Recorder(_fixture_answer("text_answer.json"))
    with pytest.raises(UnsupportedParameter) as refused:
        await _adapter(upstream).complete(_body(logit_bias={"1": 1}), timeout_s=5)
    assert (refused.value.param, refused.value.deployment) == ("logit_bias", "gem-1")
    with pytest.raises(UnsupportedParameter):
        await _adapter(upstream).stream(_body(logit_bias={"1": 1}), timeout_s=5,
                                        on_chunk=_ignore)
    assert upstream.requests == []


async def _ignore(chunk: dict[str, Any]) -> None:
    return None


# --- errors -----------------------------------------------------------------------------


async def test_resource_exhausted_is_retriable_after_googles_retry_delay() -> None:
    adapter = _adapter(_fixture_answer("error_429.json", status=429))
    with pytest.raises(ProviderRetriable) as failed:
        await adapter.complete(_body(), timeout_s=5)
    assert failed.value.status_code == 429
    assert failed.value.retry_after_s == 31.0
    assert "RESOURCE_EXHAUSTED: You exceeded your current quota" in str(failed.value)


async def test_a_retry_after_header_serves_when_google_gives_no_retry_info() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.",
                       "status": "UNAVAILABLE"}}
    adapter = _adapter(lambda request: httpx.Response(503, json=error,
                                                      headers={"retry-after": "7"}))
    with pytest.raises(ProviderRetriable) as failed:
        await adapter.complete(_body(), timeout_s=5)
    assert (failed.value.status_code, failed.value.retry_after_s) == (503, 7.0)
    assert failed.value.rate_limit_headers == {"retry-after": "7"}


@pytest.mark.parametrize("status", [500, 503, 504, 408])
async def test_server_trouble_is_retriable(status: int) -> None:
    error = {"error": {"code": status, "message": "try later", "status": "INTERNAL"}}
    with pytest.raises(ProviderRetriable) as failed:
        await _adapter(lambda request: httpx.Response(status, json=error)).complete(
            _body(), timeout_s=5)
    assert failed.value.status_code == status


async def test_an_invalid_argument_is_rejected_with_googles_message() -> None:
    adapter = _adapter(_fixture_answer("error_invalid_argument.json", status=400))
    with pytest.raises(ProviderRejected) as rejected:
        await adapter.complete(_body(), timeout_s=5)
    assert not isinstance(rejected.value, ProviderRetriable | UnsupportedParameter)
    assert rejected.value.status_code == 400
    assert "candidate_count: must be at most 8" in str(rejected.value)


@pytest.mark.parametrize(("status", "error"), [
    (400, orjson.loads((FIXTURES / "error_api_key_invalid.json").read_bytes())),
    (400, {"error": {"code": 400, "status": "FAILED_PRECONDITION",
                     "message": "User location is not supported for the API use."}}),
    (403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                     "message": "Method doesn't allow unregistered callers. AIza-test"}}),
    (404, {"error": {"code": 404, "status": "NOT_FOUND",
                     "message": "models/gemini-9 is not found for API version v1beta"}}),
])
async def test_a_deployment_google_will_not_serve_is_failed_over_quietly(
    status: int, error: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    adapter = _adapter(lambda request: httpx.Response(status, json=error))
    with caplog.at_level(logging.WARNING, logger="sluice.providers"), \
            pytest.raises(ProviderRetriable) as failed:
        await adapter.complete(_body(), timeout_s=5)
    assert failed.value.status_code == status
    assert "operator must check" in str(failed.value)
    assert error["error"]["message"] not in str(failed.value)  # for operators only
    assert error["error"]["message"] in caplog.text


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
async def test_transport_failures_are_retriable(error: httpx.RequestError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(ProviderRetriable):
        await _adapter(handler).complete(_body(), timeout_s=5)


@pytest.mark.parametrize("content", [b"<html>proxy</html>", b"[]", b'{"candidates": []}'])
async def test_a_success_that_is_not_an_answer_is_retriable(content: bytes) -> None:
    adapter = _adapter(lambda request: httpx.Response(200, content=content))
    with pytest.raises(ProviderRetriable, match="not"):
        await adapter.complete(_body(), timeout_s=5)


# --- streaming --------------------------------------------------------------------------


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(event) + b"\r\n\r\n" for event in events)


async def test_a_stream_hands_on_openai_chunks_and_ends_with_the_usage() -> None:
    upstream = _Recorder(lambda request: httpx.Response(
        200, content=(FIXTURES / "text_stream.sse").read_bytes(),
        headers={"content-type": "text/event-stream"}))
    received: list[dict[str, Any]] = []

    async def on_chunk(chunk: dict[str, Any]) -> None:
        received.append(chunk)

    response = await _adapter(upstream).stream(_body(), timeout_s=5, on_chunk=on_chunk)
    (request,) = upstream.requests
    assert str(request.url) == ("https://generativelanguage.googleapis.com/v1beta/models/"
                                "gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert request.headers["accept"] == "text/event-stream"
    assert "".join(chunk["choices"][0]["delta"].get("content", "")
                   for chunk in received if chunk["choices"]) == (
        "Grey waves fold on stone, salt wind carries gull voices.")
    assert received[-1]["choices"] == []
    assert received[-1]["usage"]["total_tokens"] == 30
    completion = response.completion
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.reasoning_completion_tokens() == 5
    assert response.provider_request_id == "stream-1"


async def test_a_stream_that_stops_before_a_finish_reason_is_broken() -> None:
    first = orjson.loads((FIXTURES / "text_stream.sse").read_bytes().split(b"\r\n\r\n")[0]
                         .removeprefix(b"data: "))
    received: list[dict[str, Any]] = []

    async def on_chunk(chunk: dict[str, Any]) -> None:
        received.append(chunk)

    adapter = _adapter(lambda request: httpx.Response(200, content=_sse([first])))
    with pytest.raises(ProviderRetriable, match="before a finishReason"):
        await adapter.stream(_body(), timeout_s=5, on_chunk=on_chunk)
    assert received  # the chunks before the break were handed on


async def test_an_error_event_breaks_the_stream() -> None:
    events = [{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}]
    adapter = _adapter(lambda request: httpx.Response(200, content=_sse(events)))
    with pytest.raises(ProviderRetriable, match="broke off its stream: UNAVAILABLE"):
        await adapter.stream(_body(), timeout_s=5, on_chunk=_ignore)


async def test_a_stream_refused_up_front_is_translated_like_a_call() -> None:
    adapter = _adapter(_fixture_answer("error_429.json", status=429))
    with pytest.raises(ProviderRetriable) as failed:
        await adapter.stream(_body(), timeout_s=5, on_chunk=_ignore)
    assert failed.value.retry_after_s == 31.0
    adapter = _adapter(_fixture_answer("error_invalid_argument.json", status=400))
    with pytest.raises(ProviderRejected):
        await adapter.stream(_body(), timeout_s=5, on_chunk=_ignore)


# --- embeddings -------------------------------------------------------------------------


async def test_embeddings_use_batch_embed_contents() -> None:
    answer = {"embeddings": [{"values": [0.5, 0.25]}, {"values": [1.0, -2.0]}]}
    upstream = _Recorder(lambda request: httpx.Response(200, json=answer))
    adapter = _adapter(upstream, model="gemini-embedding-001")
    body = EmbeddingRequest.model_validate({"model": "e", "input": ["sea", "salt wind"],
                                            "encoding_format": "base64"})
    response = await adapter.embed(body, timeout_s=5)
    (request,) = upstream.requests
    assert str(request.url).endswith("/v1beta/models/gemini-embedding-001:batchEmbedContents")
    assert [item["content"] for item in orjson.loads(request.content)["requests"]] == [
        {"parts": [{"text": "sea"}]}, {"parts": [{"text": "salt wind"}]}]
    embeddings = response.completion
    assert isinstance(embeddings, EmbeddingResponse)
    assert struct.unpack("<2f", base64.b64decode(str(embeddings.data[1].embedding))) == (
        1.0, -2.0)
    # Gemini reported no tokens: the estimate bills the call all the same.
    assert embeddings.usage is not None and embeddings.usage.prompt_tokens >= 3


async def test_embeddings_that_do_not_match_the_inputs_are_retriable() -> None:
    adapter = _adapter(lambda request: httpx.Response(200, json={"embeddings": []}))
    body = EmbeddingRequest.model_validate({"model": "e", "input": "sea"})
    with pytest.raises(ProviderRetriable):
        await adapter.embed(body, timeout_s=5)


# --- against the simulator's Gemini endpoint ---------------------------------------------


async def test_against_the_simulators_gemini_api() -> None:
    """Another implementation of Google's wire format than the fixtures: a call, a stream
    and embeddings all come back whole and billed."""
    app = create_simulator_app(SimulatorSettings(models=("gemini-2.5-flash",)))
    async with httpx.ASGITransport(app=app) as transport:
        adapter = GeminiProvider(transport, "gem-1", _config(base_url="http://sim.test"),
                                 "AIza-test")
        answer = await adapter.complete(_body(max_tokens=8), timeout_s=5)
        received: list[dict[str, Any]] = []

        async def on_chunk(chunk: dict[str, Any]) -> None:
            received.append(chunk)

        streamed = await adapter.stream(_body(max_tokens=8), timeout_s=5, on_chunk=on_chunk)
        embedded = await adapter.embed(
            EmbeddingRequest.model_validate({"model": "e", "input": ["a", "b"]}), timeout_s=5)
    for response in (answer, streamed):
        completion = response.completion
        assert isinstance(completion, ChatCompletion)
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert received[-1]["choices"] == [] and received[-1]["usage"]
    assert isinstance(embedded.completion, EmbeddingResponse)
    assert len(embedded.completion.data) == 2
