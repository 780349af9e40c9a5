"""Streamed answers: chunks and their whole, the adapter's SSE reading, the processor's rules."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from broker.config import DeploymentConfig, parse_config
from broker.errors import ProviderRejected, ProviderRetriable
from schemas import ChatCompletion, ChatCompletionRequest, InferenceRequest, RequestStatus
from schemas.streaming import assemble_completion, stream_chunks
from simulator.answers import simulate_completion
from workers.inference.processor import RequestProcessor
from workers.providers import OpenAICompatibleProvider, ProviderResponse, SimulatedProvider
from workers.providers.base import ChunkSink

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}


def _body(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Stream me an answer."}],
         **fields})


@pytest.mark.parametrize("fields", [
    {}, {"n": 2, "logprobs": True, "top_logprobs": 1}, {"tools": [TOOL]},
    {"reasoning_effort": "low"},
], ids=["text", "two-choices-logprobs", "tool-call", "reasoning"])
def test_chunks_add_up_to_the_completion(fields: dict[str, Any]) -> None:
    completion = simulate_completion(_body(**fields), upstream_model="gpt-4o-mini",
                                     request_id="chatcmpl-1", created=7)
    chunks = stream_chunks(completion, include_usage=True)
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assembled = assemble_completion(chunks)
    expected = completion.model_dump(mode="json", exclude_none=True)
    assert assembled.model_dump(mode="json", exclude_none=True) == expected | {
        "choices": [choice | {"logprobs": choice.get("logprobs")}
                    for choice in expected["choices"]]}
    without_usage = stream_chunks(completion, include_usage=False)
    assert all("usage" not in chunk for chunk in without_usage)


def _sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(b"data: " + (event.encode() if isinstance(event, str)
                                 else orjson.dumps(event)) + b"\n\n" for event in events)


def _adapter(answer: httpx.Response, seen: list[dict[str, Any]]) -> OpenAICompatibleProvider:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(orjson.loads(request.content))
        return answer

    config = DeploymentConfig(provider="openai", model="up", base_url="http://up/v1")
    return OpenAICompatibleProvider(httpx.MockTransport(handler), "d", config)


async def test_the_adapter_hands_on_each_chunk_and_always_asks_for_usage() -> None:
    completion = simulate_completion(_body(), upstream_model="up", request_id="c-1")
    chunks = stream_chunks(completion, include_usage=True)
    seen: list[dict[str, Any]] = []
    adapter = _adapter(httpx.Response(200, content=_sse(*chunks, "[DONE]"),
                                      headers={"content-type": "text/event-stream"}), seen)
    received: list[dict[str, Any]] = []

    async def collect(chunk: dict[str, Any]) -> None:
        received.append(chunk)

    response = await adapter.stream(_body(stream=True), timeout_s=5, on_chunk=collect)
    assert received == chunks
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    assert response.completion.usage == completion.usage
    assert response.completion.choices[0].message.content == \
        completion.choices[0].message.content


@pytest.mark.parametrize(("body", "match"), [
    (_sse({"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
          {"error": {"message": "overloaded", "type": "server_error"}}), "overloaded"),
    (_sse({"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}), r"\[DONE\]"),
], ids=["error-event", "no-done"])
async def test_a_stream_that_breaks_off_is_retriable_after_its_chunks(
    body: bytes, match: str,
) -> None:
    adapter = _adapter(httpx.Response(200, content=body), [])
    received: list[dict[str, Any]] = []

    async def collect(chunk: dict[str, Any]) -> None:
        received.append(chunk)

    with pytest.raises(ProviderRetriable, match=match):
        await adapter.stream(_body(stream=True), timeout_s=5, on_chunk=collect)
    assert len(received) == 1


async def test_a_refusal_before_the_stream_is_a_plain_rejection() -> None:
    adapter = _adapter(httpx.Response(400, json={"error": {"message": "bad tools"}}), [])

    async def never(_: dict[str, Any]) -> None:
        raise AssertionError("no chunk expected")

    with pytest.raises(ProviderRejected, match="bad tools"):
        await adapter.stream(_body(stream=True), timeout_s=5, on_chunk=never)


class _Breaking:
    """Streams `before` chunks of a real answer, then fails (or, with 0, fails at once)."""

    name = "openai"

    def __init__(self, deployment: str, before: int):
        self.deployment = deployment
        self.before = before

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float) -> ProviderResponse:
        raise AssertionError("streamed requests must stream")

    async def stream(self, body: ChatCompletionRequest, *, timeout_s: float,
                     on_chunk: ChunkSink) -> ProviderResponse:
        completion = simulate_completion(body, upstream_model="gpt-4o-mini")
        for chunk in stream_chunks(completion, include_usage=True)[: self.before]:
            await on_chunk(chunk)
        raise ProviderRetriable(f"{self.deployment} broke", deployment=self.deployment)


CONFIG = parse_config({
    "models": {"m": {"deployments": ["first", "second"]}},
    "deployments": {"first": {"provider": "simulated", "model": "gpt-4o-mini"},
                    "second": {"provider": "simulated", "model": "gpt-4o-mini"}},
})


def _request() -> InferenceRequest:
    from datetime import UTC, datetime
    return InferenceRequest(id="req_s", model="m", body=_body(stream=True), tenant="acme",
                            created_at=datetime.now(UTC), reply_to="replies")


async def _process(providers: dict[str, Any]) -> tuple[Any, list[tuple[int, dict[str, Any]]]]:
    emitted: list[tuple[int, dict[str, Any]]] = []

    async def emit(_: InferenceRequest, sequence: int, chunk: dict[str, Any]) -> None:
        emitted.append((sequence, chunk))

    processor = RequestProcessor(CONFIG, providers, emit=emit)
    return await processor.process(_request()), emitted


async def test_a_failure_before_the_first_chunk_fails_over() -> None:
    outcome, emitted = await _process({"first": _Breaking("first", 0),
                                       "second": SimulatedProvider("second",
                                                                   CONFIG.deployments["second"])})
    assert outcome.result.status is RequestStatus.SUCCEEDED
    assert outcome.result.deployment == "second"
    assert [sequence for sequence, _ in emitted] == list(range(len(emitted)))
    assert isinstance(outcome.result.completion, ChatCompletion)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for _, c in emitted
                   if c["choices"])
    assert outcome.result.completion.choices[0].message.content == text
    assert [usage.status for usage in outcome.usage] == ["succeeded"]


async def test_a_failure_after_the_first_chunk_ends_the_request_and_bills_what_was_sent() -> None:
    outcome, emitted = await _process({"first": _Breaking("first", 3),
                                       "second": _Breaking("second", 99)})
    assert len(emitted) == 3  # never a second answer after part of the first
    result = outcome.result
    assert result.status is RequestStatus.FAILED
    assert result.error is not None and result.error.code == "stream_interrupted"
    (usage,) = outcome.usage
    assert (usage.deployment, usage.status) == ("first", "failed")
    assert usage.input_tokens > 0 and usage.output_tokens > 0


async def test_a_cancel_while_streaming_stops_the_call_and_bills_it() -> None:
    class _Slow(_Breaking):
        async def stream(self, body: ChatCompletionRequest, *, timeout_s: float,
                         on_chunk: ChunkSink) -> ProviderResponse:
            for chunk in stream_chunks(simulate_completion(body, upstream_model="gpt-4o-mini"),
                                       include_usage=True):
                await on_chunk(chunk)
                await asyncio.sleep(0)
            raise AssertionError("the cancel should have stopped the stream")

    emitted: list[int] = []
    processor: RequestProcessor

    async def emit(request: InferenceRequest, sequence: int, _: dict[str, Any]) -> None:
        emitted.append(sequence)
        if sequence == 1:
            processor.cancelled.add(request.id, request.tenant)

    processor = RequestProcessor(CONFIG, {"first": _Slow("first", 0), "second": _Slow(
        "second", 0)}, emit=emit)
    outcome = await processor.process(_request())
    assert outcome.result.status is RequestStatus.CANCELLED
    assert emitted == [0, 1]
    assert [usage.status for usage in outcome.usage] == ["failed"]
