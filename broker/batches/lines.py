"""Batch lines, pure: splitting a stream into lines, checking input lines, and the output
and error line format of OpenAI's Batch API (no I/O).

Two kinds of problems are told apart. A structural one (not JSON, no `custom_id`, a `url`
other than the batch's endpoint, a duplicate `custom_id`, too many lines) fails the whole
batch during validation, as OpenAI does. A body that is not a valid chat request, or names
a model the key may not call, becomes that line's entry in the error file (status 400).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from schemas import ChatCompletionRequest, EmbeddingRequest, InferenceResult, RequestStatus
from schemas.validation import dotted_param, most_specific_error

CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
ENDPOINT_KINDS = {CHAT_ENDPOINT: "chat", EMBEDDINGS_ENDPOINT: "embedding"}
"""The Batch API endpoints served, and the kind of model each one calls."""

# OpenAI's codes for final failures other than a provider's own HTTP status.
_STATUS_FOR_ERROR = {"invalid_request_error": 400, "upstream_error": 502,
                     "deadline_exceeded": 504, "rate_limit_error": 429}


@dataclass(frozen=True, slots=True)
class LineError:
    """One entry of a batch's `errors.data`."""

    code: str
    line: int
    message: str
    param: str | None = None

    def body(self) -> dict[str, Any]:
        """`{code, line, message, param}` as OpenAI shows it."""
        return {"code": self.code, "line": self.line, "message": self.message,
                "param": self.param}


@dataclass(frozen=True, slots=True)
class InputLine:
    """A structurally valid input line; `body` is None when `problem` says why it is not."""

    line: int
    custom_id: str
    body: ChatCompletionRequest | EmbeddingRequest | None
    problem: str | None = None
    code: str | None = None
    """OpenAI's error code for `problem`, where one fits (`request_too_large`)."""


async def split_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """(1-based line number, bytes) of every non-blank line of a streamed file."""
    pending, number = b"", 0
    async for chunk in chunks:
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        for part in parts:
            number += 1
            if part.strip():
                yield number, part
    if pending.strip():
        yield number + 1, pending


def parse_line(number: int, raw: bytes, endpoint: str,
               models: frozenset[str]) -> InputLine | LineError:
    """Check one input line against the batch's endpoint and allowed models."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LineError("invalid_json_line", number, "This line is not parseable as valid JSON.")
    if not isinstance(data, dict):
        return LineError("invalid_json_line", number, "Each line must be a JSON object.")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError("missing_required_parameter", number,
                         "Missing required parameter: 'custom_id'.", "custom_id")
    if data.get("method") != "POST":
        return LineError("invalid_method", number, "Only POST is supported.", "method")
    if data.get("url") != endpoint:
        return LineError("mismatched_endpoint", number,
                         f"The url of this line does not match the batch endpoint {endpoint}.",
                         "url")
    body = data.get("body")
    if not isinstance(body, dict):
        return LineError("missing_required_parameter", number,
                         "Missing required parameter: 'body'.", "body")
    try:
        request: ChatCompletionRequest | EmbeddingRequest
        if endpoint == EMBEDDINGS_ENDPOINT:
            request = EmbeddingRequest.model_validate(body)
        else:
            request = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = most_specific_error(exc)
        where = dotted_param(first["loc"]) or "body"
        detail = str(first["msg"]).removeprefix("Value error, ")
        return InputLine(number, custom_id, None, f"Invalid value for '{where}': {detail}.")
    if isinstance(request, ChatCompletionRequest) and request.stream:
        return InputLine(number, custom_id, None, "Invalid value for 'stream': a batch "
                         "line's answer is written to the output file, not streamed; omit it.")
    if request.model not in models:
        return InputLine(number, custom_id, None, f"The model '{request.model}' does not exist "
                         "or you do not have access to it.")
    return InputLine(number, custom_id, request)


def error_envelope(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's `{"error": {...}}` envelope."""
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def answer_of(result: InferenceResult) -> tuple[str, int | None, dict[str, Any] | None]:
    """(line status, HTTP status code, body) a final result gives its batch line."""
    if result.status is RequestStatus.SUCCEEDED and result.completion is not None:
        body = result.completion.model_dump(mode="json", exclude_none=True)
        return "succeeded", 200, {**body, "id": result.request_id}
    if result.status in (RequestStatus.EXPIRED, RequestStatus.CANCELLED):
        return result.status.value, None, None
    error = result.error
    if error is None:
        return "failed", 500, error_envelope(f"request ended {result.status}", "server_error")
    status = _STATUS_FOR_ERROR.get(error.type, 500)
    return "failed", status, error_envelope(error.message, error.type, error.code)


def output_line(request_id: str, custom_id: str, status: str, status_code: int | None,
                body: dict[str, Any] | None) -> bytes:
    """One line of the output or error file, newline included."""
    if status in ("expired", "cancelled"):
        word = "expired before it could be processed" if status == "expired" else "cancelled"
        line: dict[str, Any] = {
            "id": request_id, "custom_id": custom_id, "response": None,
            "error": {"code": f"batch_{status}", "message": f"This request was {word}."}}
    else:
        line = {"id": request_id, "custom_id": custom_id,
                "response": {"status_code": status_code, "request_id": request_id,
                             "body": body},
                "error": None}
    return orjson.dumps(line) + b"\n"
