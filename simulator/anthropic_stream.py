"""An Anthropic `message` as its Messages API streams it: named server-sent events.

`message_start` (the message without content, input usage known), per block
`content_block_start`, `content_block_delta` (`text_delta` word by word,
`input_json_delta` in pieces of the tool input's JSON) and `content_block_stop`, a `ping`
after the first block opens, then `message_delta` (stop reason, output tokens) and
`message_stop`. A cut stream ends with an `error` event (`overloaded_error`), as
Anthropic's do when it fails mid-answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from simulator.asgi import Send
from simulator.dialects import Headers

_JSON_PIECE_CHARS = 16
_OVERLOADED = {"type": "error",
               "error": {"type": "overloaded_error", "message": "Overloaded (simulated)."}}


def event(name: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The events of `message`, in order, as (name, data)."""
    usage = message["usage"]
    yield "message_start", {"type": "message_start", "message": {
        **message, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1}}}
    for index, block in enumerate(message["content"]):
        opened = ({**block, "text": ""} if block["type"] == "text"
                  else {**block, "input": {}})
        yield "content_block_start", {"type": "content_block_start", "index": index,
                                      "content_block": opened}
        if index == 0:
            yield "ping", {"type": "ping"}
        for delta in _deltas(block):
            yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield "message_delta", {"type": "message_delta", "delta": {
        "stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
        "usage": {"output_tokens": usage["output_tokens"]}}
    yield "message_stop", {"type": "message_stop"}


def _deltas(block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if block["type"] == "text":
        for number, word in enumerate(block["text"].split(" ")):
            yield {"type": "text_delta", "text": word if number == 0 else " " + word}
        return
    encoded = orjson.dumps(block["input"]).decode()
    for start in range(0, len(encoded), _JSON_PIECE_CHARS):
        yield {"type": "input_json_delta",
               "partial_json": encoded[start:start + _JSON_PIECE_CHARS]}


async def stream_message(send: Send, message: dict[str, Any], headers: Headers,
                         cut_after: int | None, *, on_cut: Callable[[], None]) -> None:
    """Stream `message`; after `cut_after` deltas (if set) break off with an error event."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"), *headers]})
    deltas = 0
    for name, data in message_events(message):
        if name == "content_block_delta":
            if deltas == cut_after:
                on_cut()
                await send({"type": "http.response.body", "body": event("error", _OVERLOADED)})
                return
            deltas += 1
        await send({"type": "http.response.body", "body": event(name, data),
                    "more_body": True})
    await send({"type": "http.response.body", "body": b""})
