"""Anthropic's error envelope: `{"type": "error", "error": {"type", "message"}, "request_id"}`.

The status code of every error is decided where it is for the OpenAI routes
(`ingress.envelope.error_response`, `ingress.rendering.failure`); only the envelope differs,
and its `error.type` follows the status (`schemas.anthropic.ERROR_TYPE_BY_STATUS`), which is
what Anthropic's SDKs turn into their typed exceptions.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.responses import Response

from broker.errors import SluiceError
from ingress.envelope import error_response, json_response
from ingress.rendering import failure
from schemas import InferenceResult
from schemas.anthropic import error_type_for

log = logging.getLogger("sluice.ingress")


def error_body(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    """The envelope of an error answered with `status`."""
    body: dict[str, Any] = {"type": "error",
                            "error": {"type": error_type_for(status), "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def error_event_body(message: str, error_type: str) -> dict[str, Any]:
    """The data of an `error` event in a stream (its HTTP status was 200 long ago)."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def sluice_error_response(exc: SluiceError) -> Response:
    """`exc` with the status and headers (`Retry-After`) the OpenAI routes would answer."""
    openai = error_response(exc)
    message = orjson.loads(openai.body)["error"]["message"]
    headers = {key: value for key, value in openai.headers.items()
               if key.lower() == "retry-after"}
    return json_response(error_body(openai.status_code, message), openai.status_code,
                         headers=headers)


def unexpected_error_response() -> Response:
    """500 for a bug: the traceback goes to the log, not to the caller."""
    return json_response(error_body(
        500, "The server had an error while processing your request; retry, and report the "
        "request id if it persists."), 500)


def result_failure(result: InferenceResult) -> tuple[int, dict[str, Any]]:
    """Status code and envelope of a request that ended without an answer."""
    status, openai = failure(result)
    return status, error_body(status, openai["error"]["message"], result.request_id)
