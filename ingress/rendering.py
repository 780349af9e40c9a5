"""How results and request states look on the wire (OpenAI objects where one exists)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ingress.envelope import error_body
from schemas import ChatCompletion, InferenceResult, RequestStatus

# Which status code a caller waiting on HTTP gets for each kind of final failure.
_STATUS_FOR_ERROR = {
    "invalid_request_error": 400,
    "upstream_error": 502,
    "deadline_exceeded": 504,
    "cancelled": 409,
}


def completion_body(result: InferenceResult) -> dict[str, Any]:
    """The `chat.completion` object; its id is our request id, for lookups and the ledger."""
    assert result.completion is not None
    body = result.completion.model_dump(mode="json", exclude_none=True)
    if isinstance(result.completion, ChatCompletion):  # an embeddings list has no id
        body["id"] = result.request_id
    return body


def failure(result: InferenceResult) -> tuple[int, dict[str, Any]]:
    """Status code and OpenAI error envelope of a request that did not succeed."""
    error = result.error
    if error is None:
        return 500, error_body(f"request ended {result.status}", "server_error")
    status = _STATUS_FOR_ERROR.get(error.type, 500)
    body = error_body(error.message, error.type, code=error.code, param=error.param)
    body["id"] = result.request_id
    return status, body


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def request_state(
    request_id: str,
    status: str,
    model: str,
    created_at: datetime | None,
    finished_at: datetime | None,
    result: dict[str, Any] | None,
    status_url: str,
) -> dict[str, Any]:
    """`GET /v1/requests/{id}`: the status and, once final, the completion or error."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "request",
        "status": status,
        "model": model,
        "created_at": _unix(created_at),
        "finished_at": _unix(finished_at),
        "status_url": status_url,
        "result": None,
        "error": None,
    }
    if result is not None:
        if status == RequestStatus.SUCCEEDED and result.get("completion"):
            body["result"] = {**result["completion"], "id": request_id}
        else:
            body["error"] = result.get("error")
    return body
