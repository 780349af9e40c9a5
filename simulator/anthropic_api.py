"""Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

The request is read into the brain's form (`simulator.anthropic_messages`), answered by
`simulator.answers` and written back as a `message`: text or `tool_use` blocks, a
`stop_reason` (`end_turn`, `max_tokens`, `tool_use`, `stop_sequence`) and usage with the
prompt cache's share (`simulator.prompt_cache`). Streams are Anthropic's named events.
An API key (`x-api-key`, or `Authorization: Bearer` as OAuth clients and recent SDKs
send it) and `anthropic-version` are required. Errors use Anthropic's envelope; an
injected 503 is answered as Anthropic's 529 `overloaded_error`; every answer carries
`request-id` and `anthropic-ratelimit-*` headers (one shared token limit, so the
`tokens`, `input-tokens` and `output-tokens` families report the same window).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import orjson
from pydantic import ValidationError

from broker.tokens import count_request_prompt_tokens, encoding_for_model
from schemas import ChatCompletion, ChatCompletionRequest, Usage
from schemas.anthropic import FINISH_TO_STOP_REASON, OVERLOADED_STATUS, error_type_for
from simulator.anthropic_messages import (
    CountTokensRequest,
    MessagesRequest,
    cache_breakpoints,
    describe,
    to_chat_request,
)
from simulator.anthropic_stream import stream_message
from simulator.asgi import Send, send_json
from simulator.dialects import Headers
from simulator.limits import LimitVerdict
from simulator.routes import Request, Route

if TYPE_CHECKING:
    from simulator.app import SimulatorApp

_LIMIT_FAMILIES = ("requests", "tokens", "input-tokens", "output-tokens")
BodyT = TypeVar("BodyT", bound=CountTokensRequest)


@dataclass(frozen=True, slots=True)
class AnthropicDialect:
    """Anthropic's `{"type": "error", "error": {type, message}, "request_id"}`."""

    request_id: str
    format: str = "anthropic"

    def error(self, status: int, message: str, *, retry_after_s: float | None = None,
              param: str | None = None, code: str | None = None) -> tuple[bytes, Headers]:
        """The envelope; a wait is announced in `retry-after` (whole seconds)."""
        body = orjson.dumps({"type": "error", "error": {
            "type": error_type_for(status), "message": message}, "request_id": self.request_id})
        if retry_after_s is None:
            return body, []
        return body, [(b"retry-after", str(max(0, math.ceil(retry_after_s))).encode())]

    def limit_headers(self, verdict: LimitVerdict) -> Headers:
        """`anthropic-ratelimit-{family}-{limit,remaining,reset}`; reset is RFC 3339."""
        reset = (datetime.now(UTC) + timedelta(seconds=verdict.full_in_s)).strftime(
            "%Y-%m-%dT%H:%M:%SZ").encode()
        headers: Headers = []
        for family in _LIMIT_FAMILIES:
            counts = verdict.requests if family == "requests" else verdict.tokens
            if counts is not None:
                prefix = f"anthropic-ratelimit-{family}-"
                headers += [((prefix + "limit").encode(), str(counts[0]).encode()),
                            ((prefix + "remaining").encode(), str(counts[1]).encode()),
                            ((prefix + "reset").encode(), reset)]
        return headers

    def fault_status(self, status: int) -> int:
        """Anthropic says "overloaded" with 529, not 503."""
        return OVERLOADED_STATUS if status == 503 else status


class _Call(NamedTuple, Generic[BodyT]):
    """An accepted call: how to answer it, its headers and token, its body and chat form."""

    dialect: AnthropicDialect
    headers: Headers
    token: str
    body: BodyT
    chat: ChatCompletionRequest


async def _accepted(app: SimulatorApp, request: Request, send: Send,
                    kind: type[BodyT]) -> _Call[BodyT] | None:
    """Count the call, check its key and version headers, read its body; None once refused."""
    token = app.begin("anthropic")
    dialect = AnthropicDialect(f"req_sim{token}")
    headers: Headers = [(b"request-id", dialect.request_id.encode())]
    bearer = (request.header("authorization") or "").removeprefix("Bearer ").strip()
    if not (request.header("x-api-key") or bearer):
        await app.send_error(send, dialect, 401, "x-api-key header is required", headers)
        return None
    if not request.header("anthropic-version"):
        await app.send_error(send, dialect, 400, "anthropic-version: header is required",
                             headers)
        return None
    try:
        body = kind.model_validate_json(await request.body())
        # count_tokens has no max_tokens; the answer's length is not asked for.
        max_tokens = body.max_tokens if isinstance(body, MessagesRequest) else None
        chat = to_chat_request(body, max_tokens)
    except ValidationError as exc:
        await app.send_error(send, dialect, 400, describe(exc), headers)
        return None
    return _Call(dialect, headers, token, body, chat)


async def _messages(app: SimulatorApp, request: Request, send: Send) -> None:
    call = await _accepted(app, request, send, MessagesRequest)
    if call is None:
        return
    dialect, headers, token, body, chat = call
    if await app.inject_fault(send, dialect, body.model, headers):
        return
    completion = app.simulate(chat, f"msg_sim{token}", cached_share=0.0)
    message = _message(completion, chat, body.stop_sequences or [],
                       app.settings.encoding)
    usage = message["usage"]
    spent = Usage.model_construct(prompt_tokens=usage["input_tokens"],
                                  completion_tokens=usage["output_tokens"])
    if not await app.admit(send, dialect, spent.prompt_tokens + spent.completion_tokens,
                           headers):
        return
    # Only an accepted call reads or writes the cache.
    cache = app.prompt_cache.use(cache_breakpoints(body, app.settings.encoding))
    usage["input_tokens"] -= cache.read_tokens + cache.written_tokens
    usage["cache_creation_input_tokens"] = cache.written_tokens
    usage["cache_read_input_tokens"] = cache.read_tokens
    await app.pause()
    app.state.record_success(spent)
    if body.stream:
        await stream_message(send, message, headers, app.stream_cut_after(body.model),
                             on_cut=lambda: app.state.record_injected("stream_cut"))
        return
    await send_json(send, 200, orjson.dumps(message), headers)


def _message(completion: ChatCompletion, chat: ChatCompletionRequest,
             stop_sequences: list[str], encoding: str | None) -> dict[str, Any]:
    """The completion as an Anthropic `message` (input tokens not yet split by the cache)."""
    choice = completion.choices[0]
    usage = completion.usage
    content: list[dict[str, Any]] = []
    stop_reason = FINISH_TO_STOP_REASON.get(choice.finish_reason or "stop", "end_turn")
    stop_sequence = None
    output_tokens = usage.completion_tokens if usage else 0
    text = choice.message.content
    if text:
        matched = _first_stop(text, stop_sequences)
        if matched is not None:
            # The model stopped where the sequence began; the sequence is not in the text.
            text = text[: text.index(matched)]
            output_tokens = encoding_for_model(chat.model, encoding).count(text)
            stop_reason, stop_sequence = "stop_sequence", matched
        content.append({"type": "text", "text": text})
    for call in choice.message.tool_calls or ():
        function = call.function
        content.append({
            "type": "tool_use", "id": "toolu_" + (call.id or "").removeprefix("call_"),
            "name": function.name if function else "",
            "input": json.loads(function.arguments or "{}") if function else {}})
    return {
        "id": completion.id, "type": "message", "role": "assistant", "model": chat.model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
        "usage": {"input_tokens": usage.prompt_tokens if usage else 0,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": output_tokens, "service_tier": "standard"},
    }


def _first_stop(text: str, stop_sequences: list[str]) -> str | None:
    found = [(text.index(stop), stop) for stop in stop_sequences if stop and stop in text]
    return min(found)[1] if found else None


async def _count_tokens(app: SimulatorApp, request: Request, send: Send) -> None:
    call = await _accepted(app, request, send, CountTokensRequest)
    if call is None:
        return
    tokens = count_request_prompt_tokens(call.chat, call.body.model, app.settings.encoding)
    app.state.record_success(None)
    await send_json(send, 200, orjson.dumps({"input_tokens": tokens}), call.headers)


ROUTES = (
    Route("POST", "/v1/messages", _messages),
    Route("POST", "/v1/messages/count_tokens", _count_tokens),
)
