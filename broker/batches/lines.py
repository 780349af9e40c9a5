"""Batch lines, pure: splitting a stream into lines, checking input lines, and the output
and error line format of OpenAI's Batch API (no I/O).

Two kinds of problems are told apart. A structural one (not JSON, no `custom_id`, a `url`
other than the batch's endpoint, a duplicate `custom_id`, too many lines) fails the whole
batch during validation, as OpenAI does. A body that is not a valid chat request, or names
a model the key may not call, becomes that line's entry in the error file (status 400), as
does a line over `batch_max_line_bytes` (`request_too_large`): it is never assembled.

In a chat batch a line may also call a prompt template (`"url":
"/v1/templates/<name>/completions"`, the body of that HTTP route). Parsing only reads the
call (`TemplateCall`); the template lives in PostgreSQL, so the launcher loads it and
renders the line later (`broker.batches.template_calls`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from broker.errors import InvalidRequest
from broker.templates.spec import parse_version, valid_name
from schemas import ChatCompletionRequest, EmbeddingRequest, InferenceResult, RequestStatus
from schemas.validation import dotted_param, most_specific_error

CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
ENDPOINT_KINDS = {CHAT_ENDPOINT: "chat", EMBEDDINGS_ENDPOINT: "embedding"}
"""The Batch API endpoints served, and the kind of model each one calls."""
TEMPLATE_URL = re.compile(r"/v1/templates/([^/]+)/completions")
"""The url of a template call, allowed in a batch of `CHAT_ENDPOINT`."""

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
class TemplateCall:
    """What a template line asks for: `version` None means the latest (until rendered:
    then it is the version the line was rendered from)."""

    name: str
    version: int | None
    variables: dict[str, Any]
    overrides: dict[str, Any]
    """The rest of the body: parameters over the template's own (as over HTTP)."""


@dataclass(frozen=True, slots=True)
class InputLine:
    """A structurally valid input line; `body` is None when `problem` says why it is not,
    or, for a template call (`call`) not rendered yet, when both are None."""

    line: int
    custom_id: str
    body: ChatCompletionRequest | EmbeddingRequest | None
    problem: str | None = None
    code: str | None = None
    """OpenAI's error code for `problem`, where one fits (`request_too_large`)."""
    call: TemplateCall | None = None

    @property
    def unrendered(self) -> bool:
        """A template call still waiting for its template."""
        return self.call is not None and self.body is None and self.problem is None

    def metadata(self) -> dict[str, str]:
        """The template and version a rendered line came from, as ingress puts them in a
        request's metadata (strings) for the ledger's `requests` row; else nothing."""
        if self.call is None or self.call.version is None or self.body is None:
            return {}
        return {"template": self.call.name, "template_version": str(self.call.version)}


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line over the per-line cap: its size and first bytes (for its `custom_id`). The rest
    of it was counted and dropped as it streamed by, never assembled."""

    size: int
    head: bytes


RawLine = bytes | LongLine
"""A line as split: its bytes, or a `LongLine` when it was over the cap."""

_HEAD_BYTES = 1024  # of a long line, kept to find its custom_id (written first, as a rule)
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*("(?:[^"\\]|\\.)*")')


class LineSplitter:
    """Splits a file into numbered lines as its chunks arrive (pure; the launcher runs it in a
    thread).

    Linear in the input: a byte is copied at most once into the line being assembled, and a
    line is assembled only up to `max_bytes` (a 200 MB line costs its first KiB of memory,
    not 200 MB and then a parse). Blank lines count in the numbering but are not returned.
    """

    def __init__(self, max_bytes: int):
        self._max = max_bytes
        self._pending = bytearray()
        self._size = 0  # of the line being split, including bytes dropped past the cap
        self._number = 0

    def feed(self, chunk: bytes) -> list[tuple[int, RawLine]]:
        """The lines `chunk` completes (1-based number, line)."""
        lines: list[tuple[int, RawLine]] = []
        view, start = memoryview(chunk), 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._take(view[start:end])
            self._finish(lines)
            start = end + 1
        self._take(view[start:])
        return lines

    def end(self) -> list[tuple[int, RawLine]]:
        """The last line, when the file does not end with a newline."""
        lines: list[tuple[int, RawLine]] = []
        if self._size:
            self._finish(lines)
        return lines

    def _take(self, part: memoryview) -> None:
        if self._size + len(part) <= self._max:
            self._pending += part
        elif len(self._pending) < _HEAD_BYTES:  # over the cap: keep the head only
            self._pending += part[:_HEAD_BYTES - len(self._pending)]
            del self._pending[_HEAD_BYTES:]
        elif self._size <= self._max:  # just crossed the cap
            del self._pending[_HEAD_BYTES:]
        self._size += len(part)

    def _finish(self, lines: list[tuple[int, RawLine]]) -> None:
        self._number += 1
        if self._size > self._max:
            lines.append((self._number, LongLine(self._size, bytes(self._pending))))
        elif self._pending.strip():
            lines.append((self._number, bytes(self._pending)))
        self._pending.clear()
        self._size = 0


def split_lines(chunks: Iterable[bytes], max_bytes: int) -> Iterator[tuple[int, RawLine]]:
    """Every line of `chunks`, in order (`LineSplitter` over a whole iterable)."""
    splitter = LineSplitter(max_bytes)
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.end()


def check_line(number: int, raw: RawLine, endpoint: str, models: frozenset[str],
               max_bytes: int) -> InputLine | LineError:
    """`parse_line`, or for a line over the cap, its entry in the error file."""
    if isinstance(raw, bytes):
        return parse_line(number, raw, endpoint, models)
    return InputLine(number, _custom_id(raw.head), None, (
        f"This line is {raw.size} bytes, over the limit of {max_bytes} bytes per batch line "
        "(SLUICE_BATCH_MAX_LINE_BYTES); it was not read."), code="request_too_large")


def _custom_id(head: bytes) -> str:
    """The custom_id of a long line, if its first KiB names it; else "" (never read further)."""
    found = _CUSTOM_ID.search(head)
    if found is None:
        return ""
    try:
        value = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return ""
    return value if isinstance(value, str) else ""


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
    url = data.get("url")
    called = (TEMPLATE_URL.fullmatch(url) if endpoint == CHAT_ENDPOINT
              and isinstance(url, str) else None)
    if url != endpoint and called is None:
        return LineError("mismatched_endpoint", number,
                         f"The url of this line does not match the batch endpoint {endpoint}.",
                         "url")
    body = data.get("body")
    if not isinstance(body, dict):
        return LineError("missing_required_parameter", number,
                         "Missing required parameter: 'body'.", "body")
    if called is not None:
        return template_line(number, custom_id, called.group(1), body)
    return check_body(number, custom_id, body, endpoint, models)


def template_line(number: int, custom_id: str, name: str, body: dict[str, Any]) -> InputLine:
    """The call a template line makes, read as `POST /v1/templates/{name}/completions`
    reads its body; or the line's problem."""
    overrides = dict(body)
    variables = overrides.pop("variables", None) or {}
    if not valid_name(name):
        return InputLine(number, custom_id, None, f"No template '{name}'.", code="not_found")
    if not isinstance(variables, dict):
        return InputLine(number, custom_id, None,
                         "Invalid value for 'variables': it must be an object.")
    try:
        version = parse_version(overrides.pop("version", None))
    except InvalidRequest:
        return InputLine(number, custom_id, None,
                         "Invalid value for 'version': it must be a positive integer.")
    return InputLine(number, custom_id, None,
                     call=TemplateCall(name, version, variables, overrides))


def check_body(number: int, custom_id: str, body: dict[str, Any], endpoint: str,
               models: frozenset[str]) -> InputLine:
    """A line's request body checked as a request of `endpoint` to one of `models`."""
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
