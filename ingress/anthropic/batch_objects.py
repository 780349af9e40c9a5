"""Message Batches over our batches, pure: the input file, the `message_batch` object and
the result lines (no I/O).

A Message Batch is one of our batches (`broker.batches`) of endpoint
`/v1/chat/completions`: its requests are translated and stored as an OpenAI batch input
file, so the batch tracker runs them like any other. Its id is ours with `msgbatch_` in
place of `batch_` (either form is accepted), and any chat batch can be seen through this
door, however it was created.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from broker.batches.lines import CHAT_ENDPOINT
from broker.errors import InvalidRequest
from ingress.anthropic.errors import error_body
from ingress.anthropic.params import MessagesRequest
from ingress.anthropic.response import to_message
from schemas import ChatCompletion, ChatCompletionRequest

ID_PREFIX = "msgbatch_"
REQUEST_COUNT = "anthropic_requests"
"""Metadata key: how many requests a batch created here has (known before it launches)."""

_ENDED = {"completed": "completed_at", "failed": "failed_at", "expired": "expired_at",
          "cancelled": "cancelled_at"}
_UNANSWERED = {"batch_cancelled": "canceled", "batch_expired": "expired"}


class BatchRequest(BaseModel):
    """One entry of `requests`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    custom_id: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    params: MessagesRequest


class NewMessageBatch(BaseModel):
    """Body of `POST /v1/messages/batches`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: Annotated[list[BatchRequest], Field(min_length=1)]


def batch_id(message_batch_id: str) -> str:
    """Our batch id for a Message Batch id (ours passes as it is)."""
    if message_batch_id.startswith(ID_PREFIX):
        return "batch_" + message_batch_id.removeprefix(ID_PREFIX)
    return message_batch_id


def message_batch_id(our_id: str) -> str:
    """The Message Batch id of one of our batches."""
    return ID_PREFIX + our_id.removeprefix("batch_")


def made_here(batch: Mapping[str, Any]) -> bool:
    """Whether `batch` was created through this door (so its input file is ours to delete
    with it, not a file the client uploaded)."""
    return REQUEST_COUNT in (batch.get("metadata") or {})


def deleted_message_batch(batch: Mapping[str, Any]) -> dict[str, str]:
    """The answer to deleting `batch` (our batch object)."""
    return {"id": message_batch_id(batch["id"]), "type": "message_batch_deleted"}


def input_file(batch: NewMessageBatch,
               translate: Callable[[MessagesRequest], ChatCompletionRequest]) -> bytes:
    """The OpenAI batch input file of `batch`'s requests (`translate`: one body to ours).

    Raises:
        InvalidRequest: a duplicate `custom_id`, a streamed request, or one that cannot be
            translated; named by its place in `requests`.
    """
    seen: set[str] = set()
    lines = []
    for number, entry in enumerate(batch.requests):
        where = f"requests[{number}]"
        if entry.custom_id in seen:
            raise InvalidRequest(f"Duplicate custom_id '{entry.custom_id}'; each request of a "
                                 "batch needs its own.", param=f"{where}.custom_id")
        seen.add(entry.custom_id)
        if entry.params.stream:
            raise InvalidRequest("A batch request's answer is kept for the results, not "
                                 "streamed; omit 'stream'.", param=f"{where}.params.stream")
        try:
            body = translate(entry.params)
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: {exc}", param=f"{where}.params.{exc.param or ''}"
                                 .rstrip("."), code=exc.code) from exc
        lines.append(orjson.dumps({"custom_id": entry.custom_id, "method": "POST",
                                   "url": CHAT_ENDPOINT,
                                   "body": body.model_dump(mode="json", exclude_none=True)}))
    return b"\n".join(lines) + b"\n"


def _rfc3339(unix: int | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def _counts(batch: Mapping[str, Any]) -> dict[str, int]:
    counts = batch["request_counts"]
    metadata = batch.get("metadata") or {}
    declared = metadata.get(REQUEST_COUNT, "")
    total = max(int(counts["total"]), int(declared) if declared.isdigit() else 0)
    succeeded, failed = int(counts["completed"]), int(counts["failed"])
    rest = max(total - succeeded - failed, 0)
    tally = {"processing": 0, "succeeded": succeeded, "errored": failed, "canceled": 0,
             "expired": 0}
    status = batch["status"]
    if status == "failed":  # refused whole by validation: every request errored
        tally.update(succeeded=0, errored=total)
    elif status == "cancelled":
        tally["canceled"] = rest
    elif status == "expired":
        tally["expired"] = rest
    elif status == "completed":
        tally["errored"] += rest
    else:
        tally["processing"] = rest
    return tally


def message_batch(batch: Mapping[str, Any], results_url: Callable[[str], str]) -> dict[str, Any]:
    """The `message_batch` object of our OpenAI batch object `batch`."""
    status = batch["status"]
    ended = _ENDED.get(status)
    public_id = message_batch_id(batch["id"])
    return {
        "id": public_id, "type": "message_batch",
        "processing_status": "ended" if ended else (
            "canceling" if status == "cancelling" else "in_progress"),
        "request_counts": _counts(batch),
        "ended_at": _rfc3339(batch.get(ended)) if ended else None,
        "created_at": _rfc3339(batch["created_at"]),
        "expires_at": _rfc3339(batch["expires_at"]),
        "cancel_initiated_at": _rfc3339(batch.get("cancelling_at")),
        "archived_at": None,
        "results_url": results_url(public_id) if ended else None,
    }


def result_line(line: Mapping[str, Any]) -> bytes:
    """A results line for one line of our output or error file."""
    error = line.get("error")
    response = line.get("response")
    result: dict[str, Any]
    if isinstance(error, dict) and error.get("code") in _UNANSWERED:
        result = {"type": _UNANSWERED[error["code"]]}
    elif isinstance(response, dict) and response.get("status_code") == 200:
        completion = ChatCompletion.model_validate(response["body"])
        result = {"type": "succeeded",
                  "message": to_message(completion, str(line.get("id") or completion.id),
                                        None)}
    else:
        status = int((response or {}).get("status_code") or 500)
        body = (response or {}).get("body") or {}
        detail = body.get("error") if isinstance(body, dict) else None
        message = (detail or error or {}).get("message") or "The request failed."
        result = {"type": "errored", "error": error_body(status, str(message))}
    return orjson.dumps({"custom_id": line.get("custom_id"), "result": result}) + b"\n"


def unanswered_line(batch: Mapping[str, Any], custom_id: str, number: int) -> bytes:
    """The results line of request `custom_id` (input line `number`), which never got an
    output or error line: `canceled` or `expired` with its batch, or `errored` with the
    reason a batch refused whole was refused."""
    status = batch["status"]
    result: dict[str, Any]
    if status in ("cancelled", "expired"):
        result = {"type": "canceled" if status == "cancelled" else "expired"}
    else:
        problems = (batch.get("errors") or {}).get("data") or ()
        reasons = {entry.get("line"): entry.get("message") for entry in problems}
        message = reasons.get(number) or next(iter(reasons.values()), None) or (
            "The request has no result.")
        result = {"type": "errored", "error": error_body(400, str(message))}
    return orjson.dumps({"custom_id": custom_id, "result": result}) + b"\n"
