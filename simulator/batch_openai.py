"""OpenAI's Batch API, simulated: `/v1/files` (upload, read, download, delete) and
`/v1/batches` (create, list, read, cancel).

Every line of an ended batch is answered by `simulator.answers` (or
`simulator.embeddings`) as the call itself would be, so the same prompt gets the same
text and usage; lines that fail validation, and lines a cancel skipped, go to the error
file. When a batch ends is `simulator.batch_state`'s business.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from schemas import ChatCompletionRequest, EmbeddingRequest
from simulator.answers import simulate_completion
from simulator.asgi import Send, send_json
from simulator.batch_state import (
    BatchAPIState,
    BatchKind,
    SimulatedBatch,
    SimulatedFile,
    batch_state,
    new_id,
    page_fields,
    send_download,
)
from simulator.embeddings import simulate_embeddings
from simulator.routes import Request, Route

if TYPE_CHECKING:
    from simulator.app import SimulatorApp


def _openai_error(status: int, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                           "param": None, "code": None}})


def _answer(app: SimulatorApp, line: dict[str, Any]) -> dict[str, Any]:
    """One output (or error) line of an OpenAI batch."""
    settings = app.settings
    body = line.get("body") or {}
    try:
        answer: Any
        if line.get("url") == "/v1/embeddings":
            request = EmbeddingRequest.model_validate(body)
            answer = simulate_embeddings(request, upstream_model=request.model,
                                         encoding=settings.encoding)
        else:
            chat = ChatCompletionRequest.model_validate(body)
            answer = simulate_completion(chat, upstream_model=chat.model,
                                         output_tokens=settings.output_tokens,
                                         encoding=settings.encoding)
        status, payload = 200, answer.model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        status, payload = 400, orjson.loads(_openai_error(400, str(exc.errors()[0]["msg"]))[1])
    return {"id": new_id("batch_req_"), "custom_id": line.get("custom_id"),
            "response": {"status_code": status, "request_id": new_id("req_"),
                         "body": payload}, "error": None}


def _store(state: BatchAPIState, name: str, lines: list[dict[str, Any]]) -> str | None:
    if not lines:
        return None
    file = SimulatedFile(new_id("file-"), name, "batch_output",
                         b"".join(orjson.dumps(line) + b"\n" for line in lines), int(time.time()))
    state.files[file.id] = file
    return file.id


def _close(state: BatchAPIState, batch: SimulatedBatch, answered: list[dict[str, Any]],
           skipped: list[dict[str, Any]]) -> None:
    """Successes to the output file; failures and cancelled lines to the error file."""
    errors = [{"id": new_id("batch_req_"), "custom_id": r.get("custom_id"), "response": None,
               "error": {"code": "batch_cancelled", "message": "Batch was cancelled."}}
              for r in skipped]
    good = [a for a in answered if a["response"]["status_code"] == 200]
    errors += [a for a in answered if a["response"]["status_code"] != 200]
    batch.counts = {"total": len(batch.requests), "completed": len(good),
                    "failed": len(errors)}
    batch.output_file_id = _store(state, f"{batch.id}_output.jsonl", good)
    batch.error_file_id = _store(state, f"{batch.id}_error.jsonl", errors)
    batch.status = "cancelled" if batch.cancel_at is not None else "completed"


_OPENAI = BatchKind("openai", _answer, _close)


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: name → (filename, content)."""
    boundary = content_type.partition("boundary=")[2].strip('"').encode()
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + boundary)[1:]:
        head, _, content = part.partition(b"\r\n\r\n")
        disposition = head.decode(errors="replace")
        name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        if name is not None:
            parts[name.group(1)] = (filename.group(1) if filename else None,
                                    content.removesuffix(b"\r\n"))
    return parts


def _openai_batch(batch: SimulatedBatch) -> dict[str, Any]:
    ended = int(batch.ended_at) if batch.ended_at else None
    created = int(batch.created_at)
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id, "completion_window": "24h",
        "status": "cancelling" if batch.cancel_at and not ended else batch.status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": created, "in_progress_at": created, "expires_at": created + 86400,
        "finalizing_at": ended if batch.status == "completed" else None,
        "completed_at": ended if batch.status == "completed" else None,
        "failed_at": ended if batch.status == "failed" else None, "expired_at": None,
        "cancelling_at": int(batch.cancel_at) if batch.cancel_at else None,
        "cancelled_at": ended if batch.status == "cancelled" else None,
        "request_counts": batch.counts or {"total": len(batch.requests), "completed": 0,
                                           "failed": 0},
        "metadata": batch.metadata}


async def _upload(app: SimulatorApp, request: Request, send: Send) -> None:
    parts = _multipart(request.header("content-type") or "", await request.body())
    if "file" not in parts or parts.get("purpose", (None, b""))[1] != b"batch":
        await send_json(send, *_openai_error(400, "Expected a 'file' and purpose 'batch'."))
        return
    filename, content = parts["file"]
    file = SimulatedFile(new_id("file-"), filename or "upload.jsonl", "batch", content,
                         int(time.time()))
    batch_state(app).files[file.id] = file
    await send_json(send, 200, orjson.dumps(file.body()))


async def _file(app: SimulatorApp, request: Request, send: Send) -> None:
    file = batch_state(app).files.get(request.params["file_id"])
    if file is None:
        await send_json(send, *_openai_error(404, "No such File object."))
    elif request.scope["method"] == "DELETE":
        del batch_state(app).files[file.id]
        await send_json(send, 200, orjson.dumps({"id": file.id, "object": "file",
                                                 "deleted": True}))
    else:
        await send_json(send, 200, orjson.dumps(file.body()))


async def _file_content(app: SimulatorApp, request: Request, send: Send) -> None:
    file = batch_state(app).files.get(request.params["file_id"])
    if file is None:
        await send_json(send, *_openai_error(404, "No such File object."))
        return
    await send_download(send, file.content, b"application/octet-stream")


async def _create_batch(app: SimulatorApp, request: Request, send: Send) -> None:
    spec = orjson.loads(await request.body() or b"{}")
    state = batch_state(app)
    file = state.files.get(str(spec.get("input_file_id")))
    if file is None:
        await send_json(send, *_openai_error(404, "No such File object."))
        return
    lines = [orjson.loads(line) for line in file.content.splitlines() if line.strip()]
    batch = SimulatedBatch(new_id("batch_"), "openai", lines, time.time(),
                           endpoint=str(spec.get("endpoint")), input_file_id=file.id,
                           metadata=spec.get("metadata"))
    ids = [line.get("custom_id") for line in lines]
    if len(set(ids)) != len(ids) or any(line.get("url") != batch.endpoint for line in lines):
        # As OpenAI: the batch is created, and fails its validation.
        batch.status, batch.ended_at = "failed", batch.created_at
        batch.errors = [{"code": "invalid_request", "line": None, "param": None,
                         "message": "custom_id must be unique and every url the endpoint."}]
    state.batches[batch.id] = batch
    await send_json(send, 200, orjson.dumps(_openai_batch(batch)))


async def _get_batch(app: SimulatorApp, request: Request, send: Send) -> None:
    await _send_batch(send, _OPENAI.find(app, request))


async def _cancel_batch(app: SimulatorApp, request: Request, send: Send) -> None:
    await _send_batch(send, _OPENAI.cancel(app, request))


async def _send_batch(send: Send, batch: SimulatedBatch | None) -> None:
    if batch is None:
        await send_json(send, *_openai_error(404, "No such batch."))
        return
    await send_json(send, 200, orjson.dumps(_openai_batch(batch)))


async def _list_batches(app: SimulatorApp, request: Request, send: Send) -> None:
    page, more = _OPENAI.page(app, request, "after")
    data = [_openai_batch(b) for b in page]
    await send_json(send, 200, orjson.dumps({"object": "list"} | page_fields(data, more)))


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/files", _upload),
    Route("GET", "/v1/files/{file_id}", _file),
    Route("DELETE", "/v1/files/{file_id}", _file),
    Route("GET", "/v1/files/{file_id}/content", _file_content),
    Route("POST", "/v1/batches", _create_batch),
    Route("GET", "/v1/batches", _list_batches),
    Route("GET", "/v1/batches/{batch_id}", _get_batch),
    Route("POST", "/v1/batches/{batch_id}/cancel", _cancel_batch),
)
