"""The ingress side of a stream: order, duplicates, usage for whom asked, and every ending."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson

from ingress.streaming import StreamEvents, stream_events
from schemas import (
    ChatCompletionRequest,
    ErrorInfo,
    InferenceRequest,
    InferenceResult,
    RequestStatus,
    StreamChunk,
)

NOW = datetime(2026, 12, 5, tzinfo=UTC)


def _request(include_usage: bool) -> InferenceRequest:
    body = ChatCompletionRequest.model_validate({
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_usage": include_usage}})
    return InferenceRequest(id="req_1", model="m", body=body, created_at=NOW)


def _chunk(sequence: int, text: str | None = None, usage: bool = False) -> StreamChunk:
    chunk: dict[str, Any] = {"id": "chatcmpl-up", "object": "chat.completion.chunk",
                             "choices": [] if usage else [
                                 {"index": 0, "delta": {"content": text}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                       "total_tokens": 3} if usage else None}
    return StreamChunk(request_id="req_1", sequence=sequence, chunk=chunk)


def _result(status: RequestStatus) -> InferenceResult:
    error = None if status is RequestStatus.SUCCEEDED else ErrorInfo(
        type="upstream_error", code="stream_interrupted", message="broke off")
    return InferenceResult(request_id="req_1", model="m", status=status, error=error,
                           created_at=NOW, finished_at=NOW)


async def _run(include_usage: bool, first: StreamChunk, *rest: StreamChunk | InferenceResult,
               idle_timeout_s: float = 1.0) -> tuple[list[Any], list[bool]]:
    events: StreamEvents = asyncio.Queue()
    for event in rest:
        events.put_nowait(event)
    ended: list[bool] = []
    body = stream_events(_request(include_usage), first, events, idle_timeout_s=idle_timeout_s,
                         status_url="http://x/v1/requests/req_1", on_end=ended.append)
    out = []
    async for event in body:
        data = event.removeprefix(b"data: ").strip()
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out, ended


async def test_chunks_go_out_in_order_once_under_our_id_then_done() -> None:
    out, ended = await _run(True, _chunk(0, "a"), _chunk(2, "c"), _chunk(1, "b"),
                            _chunk(1, "b"), _chunk(3, usage=True),
                            _result(RequestStatus.SUCCEEDED))
    texts = [event["choices"][0]["delta"]["content"] for event in out[:3]]
    assert texts == ["a", "b", "c"]  # reordered, and the redelivered copy dropped
    assert {event["id"] for event in out[:4]} == {"req_1"}
    assert out[3]["usage"]["total_tokens"] == 3
    assert out[4] == "[DONE]"
    assert ended == [True]


async def test_a_client_that_did_not_ask_sees_no_usage() -> None:
    out, _ = await _run(False, _chunk(0, "a"), _chunk(1, usage=True),
                        _result(RequestStatus.SUCCEEDED))
    assert len(out) == 2 and "usage" not in out[0] and out[1] == "[DONE]"


async def test_a_break_after_the_first_chunk_is_an_error_event_not_done() -> None:
    out, ended = await _run(True, _chunk(0, "a"), _result(RequestStatus.FAILED))
    assert out[-1]["error"]["code"] == "stream_interrupted"
    assert "[DONE]" not in out
    assert ended == [True]


async def test_a_stalled_stream_ends_with_an_error_and_asks_for_a_cancel() -> None:
    out, ended = await _run(True, _chunk(0, "a"), idle_timeout_s=0.05)
    assert out[-1]["error"]["code"] == "stream_stalled"
    assert ended == [False]


async def test_a_client_that_leaves_asks_for_a_cancel() -> None:
    events: StreamEvents = asyncio.Queue()
    ended: list[bool] = []
    body = stream_events(_request(True), _chunk(0, "a"), events, idle_timeout_s=5,
                         status_url="u", on_end=ended.append)
    assert (await anext(body)).startswith(b"data: ")
    await body.aclose()  # what the server does when the connection drops
    assert ended == [False]
