"""Streamed answers at the HTTP edge: server-sent events out of the reply topic.

The worker publishes each provider chunk to this instance's reply topic, then the final
result. The client gets OpenAI's stream: every chunk (under our request id), `[DONE]`
after a successful end, or an error event when the answer broke off after it began
(never a 200 that just stops). The provider is always asked for usage, which is what the
call is billed by; a client that did not ask for it (`stream_options.include_usage`) does
not see the usage chunk. A client that goes away cancels the provider call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from ingress.envelope import error_body
from ingress.rendering import failure
from schemas import (
    ChatCompletionRequest,
    InferenceRequest,
    InferenceResult,
    RequestStatus,
    StreamChunk,
)
from schemas.streaming import SSE_DONE, is_usage_only, sse_event

StreamEvents = asyncio.Queue[StreamChunk | InferenceResult]


def client_chunk(chunk: dict[str, Any], request: InferenceRequest) -> dict[str, Any] | None:
    """A provider chunk as this client gets it (None: not for this client)."""
    body = request.body
    if not (isinstance(body, ChatCompletionRequest) and body.wants_stream_usage()):
        if is_usage_only(chunk):
            return None
        chunk = {key: value for key, value in chunk.items() if key != "usage"}
    return {**chunk, "id": request.id}


async def stream_events(
    request: InferenceRequest,
    first: StreamChunk,
    events: StreamEvents,
    *,
    idle_timeout_s: float,
    status_url: str,
    on_end: Callable[[bool], None],
) -> AsyncIterator[bytes]:
    """The SSE body: chunks in sequence order, then `[DONE]` or an error event.

    `on_end(finished)` runs however the stream ends; `finished` is False when the client
    left or the answer stalled, so the caller can cancel the provider call.
    """
    expected = 0
    pending: dict[int, dict[str, Any]] = {}
    finished = False
    event: StreamChunk | InferenceResult = first
    try:
        while True:
            if isinstance(event, InferenceResult):
                finished = True
                if event.status is RequestStatus.SUCCEEDED:
                    yield SSE_DONE
                else:
                    yield sse_event(failure(event)[1])
                return
            if event.sequence >= expected:  # lower: a redelivered copy, already sent
                pending[event.sequence] = event.chunk
            while expected in pending:
                chunk = client_chunk(pending.pop(expected), request)
                expected += 1
                if chunk is not None:
                    yield sse_event(chunk)
            try:
                event = await asyncio.wait_for(events.get(), idle_timeout_s)
            except TimeoutError:
                yield sse_event(error_body(
                    f"No more of the answer arrived within {idle_timeout_s:g}s; the stream "
                    f"ends here. GET {status_url} gives the whole answer once it is final.",
                    "timeout", code="stream_stalled"))
                return
    finally:
        on_end(finished)
