"""Anthropic's Message Batches, simulated: `/v1/messages/batches` (create, list, read,
cancel) and a batch's `results` (JSON lines, once it has ended).

Every request of an ended batch is answered by `simulator.answers` as a chat call would
be (text content only), so the same prompt gets the same text and usage; requests a
cancel skipped are `canceled`. When a batch ends is `simulator.batch_state`'s business.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from schemas import ChatCompletion, ChatCompletionRequest
from schemas.anthropic import FINISH_TO_STOP_REASON
from simulator.answers import simulate_completion
from simulator.asgi import Send, send_json
from simulator.batch_state import (
    BatchAPIState,
    BatchKind,
    SimulatedBatch,
    batch_state,
    new_id,
    page_fields,
    send_download,
)
from simulator.routes import Request, Route

if TYPE_CHECKING:
    from simulator.app import SimulatorApp

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # Anthropic's rule


def _anthropic_error(status: int, message: str) -> tuple[int, bytes]:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return status, orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _chat_of(params: dict[str, Any]) -> ChatCompletionRequest:
    """An Anthropic Messages body as a chat request (text content only)."""
    def text(content: Any) -> str:
        if isinstance(content, str):
            return content
        return "".join(str(block.get("text") or block.get("content") or "")
                       for block in content or () if isinstance(block, dict))

    messages = [{"role": "system", "content": text(params["system"])}] \
        if params.get("system") else []
    messages += [{"role": m.get("role"), "content": text(m.get("content"))}
                 for m in params.get("messages") or ()]
    if not isinstance(params.get("max_tokens"), int):
        raise ValueError("max_tokens: Field required")
    return ChatCompletionRequest.model_validate(
        {"model": params.get("model"), "messages": messages, "max_tokens": params["max_tokens"]})


def anthropic_message(completion: ChatCompletion) -> dict[str, Any]:
    """A chat completion as Anthropic's `message` object (text answers)."""
    choice = completion.choices[0]
    usage = completion.usage
    return {
        "id": new_id("msg_"), "type": "message", "role": "assistant",
        "model": completion.model,
        "content": [{"type": "text", "text": choice.message.content or ""}],
        "stop_reason": FINISH_TO_STOP_REASON.get(choice.finish_reason or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": usage.prompt_tokens if usage else 0,
                  "output_tokens": usage.completion_tokens if usage else 0,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def _answer(app: SimulatorApp, request: dict[str, Any]) -> dict[str, Any]:
    """One result of a message batch: `succeeded` with its message, or `errored`."""
    params = request.get("params") or {}
    try:
        chat = _chat_of(params)
    except (ValidationError, ValueError, TypeError) as exc:
        error = {"type": "invalid_request_error", "message": str(exc).splitlines()[0]}
        return {"custom_id": request["custom_id"],
                "result": {"type": "errored", "error": {"type": "error", "error": error}}}
    completion = simulate_completion(chat, upstream_model=chat.model,
                                     output_tokens=app.settings.output_tokens,
                                     encoding=app.settings.encoding)
    return {"custom_id": request["custom_id"],
            "result": {"type": "succeeded", "message": anthropic_message(completion)}}


def _close(state: BatchAPIState, batch: SimulatedBatch, answered: list[dict[str, Any]],
           skipped: list[dict[str, Any]]) -> None:
    """Results in request order, skipped requests `canceled`; the batch has `ended`."""
    batch.results = answered + [{"custom_id": r["custom_id"], "result": {"type": "canceled"}}
                                for r in skipped]
    kinds = [r["result"]["type"] for r in batch.results]
    batch.counts = {k: kinds.count(k) for k in
                    ("succeeded", "errored", "canceled", "expired")} | {"processing": 0}
    batch.status = "ended"


_ANTHROPIC = BatchKind("anthropic", _answer, _close)


def _rfc3339(moment: float | None) -> str | None:
    return datetime.fromtimestamp(moment, UTC).isoformat() if moment else None


def _message_batch(batch: SimulatedBatch) -> dict[str, Any]:
    processing = "ended" if batch.ended_at else "canceling" if batch.cancel_at \
        else "in_progress"
    counts = batch.counts or {"processing": len(batch.requests), "succeeded": 0, "errored": 0,
                              "canceled": 0, "expired": 0}
    return {
        "id": batch.id, "type": "message_batch", "processing_status": processing,
        "request_counts": counts, "ended_at": _rfc3339(batch.ended_at),
        "created_at": _rfc3339(batch.created_at),
        "expires_at": _rfc3339(batch.created_at + 86400), "archived_at": None,
        "cancel_initiated_at": _rfc3339(batch.cancel_at),
        "results_url": (f"/v1/messages/batches/{batch.id}/results" if batch.ended_at
                        else None)}


async def _create_message_batch(app: SimulatorApp, request: Request, send: Send) -> None:
    requests = orjson.loads(await request.body() or b"{}").get("requests")
    ids = [r.get("custom_id") for r in requests or () if isinstance(r, dict)]
    if not requests or len(ids) != len(requests) or len(set(ids)) != len(ids) or not all(
            isinstance(i, str) and _CUSTOM_ID.match(i) for i in ids):
        await send_json(send, *_anthropic_error(400, "requests: each needs a unique custom_id "
                                                     "of 1-64 letters, digits, '_' or '-'."))
        return
    batch = SimulatedBatch(new_id("msgbatch_"), "anthropic", requests, time.time())
    batch_state(app).batches[batch.id] = batch
    await send_json(send, 200, orjson.dumps(_message_batch(batch)))


async def _get_message_batch(app: SimulatorApp, request: Request, send: Send) -> None:
    await _send_message_batch(send, _ANTHROPIC.find(app, request))


async def _cancel_message_batch(app: SimulatorApp, request: Request, send: Send) -> None:
    await _send_message_batch(send, _ANTHROPIC.cancel(app, request))


async def _send_message_batch(send: Send, batch: SimulatedBatch | None) -> None:
    if batch is None:
        await send_json(send, *_anthropic_error(404, "No such message batch."))
        return
    await send_json(send, 200, orjson.dumps(_message_batch(batch)))


async def _list_message_batches(app: SimulatorApp, request: Request, send: Send) -> None:
    page, more = _ANTHROPIC.page(app, request, "after_id")
    data = [_message_batch(b) for b in page]
    await send_json(send, 200, orjson.dumps(page_fields(data, more)))


async def _message_batch_results(app: SimulatorApp, request: Request, send: Send) -> None:
    batch = _ANTHROPIC.find(app, request)
    if batch is None or batch.ended_at is None:
        await send_json(send, *_anthropic_error(
            404 if batch is None else 400, "No such message batch, or it has not ended."))
        return
    content = b"".join(orjson.dumps(result) + b"\n" for result in batch.results)
    await send_download(send, content, b"application/binary")


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/messages/batches", _create_message_batch),
    Route("GET", "/v1/messages/batches", _list_message_batches),
    Route("GET", "/v1/messages/batches/{batch_id}", _get_message_batch),
    Route("POST", "/v1/messages/batches/{batch_id}/cancel", _cancel_message_batch),
    Route("GET", "/v1/messages/batches/{batch_id}/results", _message_batch_results),
)
