"""A streamed answer as Anthropic's named server-sent events.

The worker streams OpenAI chunks onto this instance's reply topic (`ingress.streaming`);
here each becomes Anthropic's events: `message_start`, then for each piece of the answer a
content block (`content_block_start`, its deltas, `content_block_stop`) — `thinking`
(`thinking_delta`, from `reasoning_content`), `text` (`text_delta`) and `tool_use`
(`input_json_delta`, the arguments as they come) — then `message_delta` with the stop
reason and the usage the provider reported, and `message_stop`.

Our Anthropic adapter streams each finished thinking block whole in `thinking_blocks`,
after its text came as `reasoning_content`: a `thinking` block's `signature` becomes the
`signature_delta` of the thinking block still open (as Anthropic sends it, last), and a
`redacted_thinking` block, which has no text to stream, a block of its own that starts
with its `data` and stops at once. A client can then send the thinking back, which
Anthropic requires when a thinking turn continues after a tool call. An answer that breaks off
after it began ends with an `error` event instead (Anthropic's SDKs raise it).

`message_start` carries the prompt's tokens as counted here (the provider's count arrives
only at the end, in `message_delta`, which Anthropic's SDKs take as the final figure).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson

from ingress.anthropic.errors import error_event_body, result_failure
from ingress.anthropic.response import (
    matched_stop_sequence,
    message_id,
    stop_reason,
    tool_use_block,
    usage_body,
)
from ingress.streaming import StreamEvents
from schemas import ChatCompletion, InferenceResult, RequestStatus, StreamChunk, Usage
from schemas.chat import ToolCall


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessageStream:
    """Anthropic's events for one answer, fed its OpenAI chunks in order (pure)."""

    def __init__(self, request_id: str, model: str, stop_sequences: Sequence[str] | None,
                 input_tokens: int):
        self._id = message_id(request_id)
        self._model = model
        self._stop_sequences = stop_sequences
        self._input_tokens = input_tokens
        self._blocks = 0  # content blocks opened so far
        self._open: tuple[str, int] | None = None  # (kind, OpenAI tool index or -1), block
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool-call index -> block index
        self._finish: str | None = None
        self._matched: str | None = None
        self._usage: Usage | None = None

    def start(self) -> bytes:
        """`message_start`: the message with no content yet."""
        return sse("message_start", {"type": "message_start", "message": {
            "id": self._id, "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0}}})

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events one chunk makes (often one delta; none for a usage-only chunk)."""
        out = bytearray()
        if isinstance(chunk.get("usage"), dict):
            self._usage = Usage.model_validate(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if int(choice.get("index") or 0) != 0:
                continue  # Anthropic answers with one message
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                out += self._delta("thinking", {"type": "thinking_delta", "thinking": reasoning})
            for block in delta.get("thinking_blocks") or ():
                out += self._thinking_block(block)
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str) and delta[key]:
                    out += self._delta("text", {"type": "text_delta", "text": delta[key]})
            for call in delta.get("tool_calls") or ():
                out += self._tool_delta(call)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                self._matched = matched_stop_sequence(choice, self._stop_sequences)
        return bytes(out)

    def finish(self, usage: Usage | None) -> bytes:
        """The last block's stop, `message_delta` (stop reason, usage) and `message_stop`."""
        reason = stop_reason(self._finish, self._matched)
        return self._close() + sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason,
                      "stop_sequence": self._matched if reason == "stop_sequence" else None},
            "usage": usage_body(usage or self._usage)}) + sse(
            "message_stop", {"type": "message_stop"})

    def _delta(self, kind: str, delta: dict[str, Any]) -> bytes:
        opened = b""
        if self._open is None or self._open[0] != kind:
            block = ({"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking"
                     else {"type": "text", "text": ""})
            opened = self._start_block(kind, -1, block)
        return opened + self._block_delta(self._blocks - 1, delta)

    def _thinking_block(self, block: Any) -> bytes:
        """A finished thinking block: its signature, or a redacted block whole."""
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "redacted_thinking":
            opened = self._start_block(kind, -1, {"type": kind, "data": block.get("data", "")})
            return opened + self._close()
        if kind != "thinking":
            return b""
        out = b""
        if self._open is None or self._open[0] != "thinking":
            # Its text never streamed: send it whole in a block of its own.
            out += self._start_block("thinking", -1, {"type": "thinking", "thinking": "",
                                                      "signature": ""})
            if block.get("thinking"):
                out += self._block_delta(self._blocks - 1, {
                    "type": "thinking_delta", "thinking": str(block["thinking"])})
        if block.get("signature"):
            out += self._block_delta(self._blocks - 1, {
                "type": "signature_delta", "signature": str(block["signature"])})
        # Signed, the block is finished: more reasoning is the next thinking block's.
        self._open = ("signed_thinking", -1)
        return out

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        index = int(call.get("index") or 0)
        function = call.get("function") or {}
        opened = b""
        if index not in self._tool_blocks:
            block = tool_use_block(ToolCall.model_validate(
                {"id": call.get("id"), "function": {"name": function.get("name")}}), index)
            block["input"] = {}
            opened = self._start_block("tool_use", index, block)
            self._tool_blocks[index] = self._blocks - 1
        arguments = function.get("arguments")
        if not isinstance(arguments, str) or not arguments:
            return opened
        return opened + self._block_delta(self._tool_blocks[index], {
            "type": "input_json_delta", "partial_json": arguments})

    def _start_block(self, kind: str, tool_index: int, block: dict[str, Any]) -> bytes:
        closed = self._close()
        self._open = (kind, tool_index)
        self._blocks += 1
        return closed + sse("content_block_start", {
            "type": "content_block_start", "index": self._blocks - 1, "content_block": block})

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                           "delta": delta})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse("content_block_stop", {"type": "content_block_stop",
                                          "index": self._blocks - 1})


async def message_events(
    translator: MessageStream,
    first: StreamChunk,
    events: StreamEvents,
    *,
    idle_timeout_s: float,
    status_url: str,
    on_end: Callable[[bool], None],
) -> AsyncIterator[bytes]:
    """The SSE body: chunks in sequence order as Anthropic's events, then the end or an
    `error` event. `on_end(finished)` runs however the stream ends (`finished` False: the
    client left or the answer stalled, so the caller can cancel the provider call)."""
    expected = 0
    pending: dict[int, dict[str, Any]] = {}
    finished = False
    event: StreamChunk | InferenceResult = first
    try:
        yield translator.start()
        while True:
            if isinstance(event, InferenceResult):
                finished = True
                if event.status is RequestStatus.SUCCEEDED:
                    completion = event.completion
                    yield translator.finish(completion.usage if isinstance(
                        completion, ChatCompletion) else None)
                else:
                    _, body = result_failure(event)
                    yield sse("error", error_event_body(body["error"]["message"],
                                                        body["error"]["type"]))
                return
            if event.sequence >= expected:  # lower: a redelivered copy, already sent
                pending[event.sequence] = event.chunk
            while expected in pending:
                data = translator.feed(pending.pop(expected))
                expected += 1
                if data:
                    yield data
            try:
                event = await asyncio.wait_for(events.get(), idle_timeout_s)
            except TimeoutError:
                yield sse("error", error_event_body(
                    f"No more of the answer arrived within {idle_timeout_s:g}s; the stream "
                    f"ends here. GET {status_url} gives the whole answer once it is final.",
                    "timeout_error"))
                return
    finally:
        on_end(finished)
