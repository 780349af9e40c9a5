"""OpenAI's error envelope, and the one place that maps our errors to HTTP status codes."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from broker.errors import (
    AccessNotApproved,
    AuthenticationFailed,
    BrokerUnavailable,
    DatabaseUnavailable,
    InvalidRequest,
    IssuerUnavailable,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
    SluiceError,
    UnknownModel,
)

RETRY_AFTER_S = 2
log = logging.getLogger("sluice.ingress")


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialised with orjson (the hot path's serializer)."""
    return Response(
        orjson.dumps(content), status_code=status_code, headers=headers,
        media_type="application/json",
    )


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`, exactly as OpenAI shapes it."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: SluiceError) -> Response:
    """Map one of our errors to its status code and envelope."""
    if isinstance(exc, UnknownModel):
        return json_response(error_body(str(exc), "invalid_request_error", param=exc.param,
                                        code=exc.code), 404)
    if isinstance(exc, PayloadTooLarge):
        return json_response(error_body(str(exc), "invalid_request_error", code=exc.code), 413)
    if isinstance(exc, InvalidRequest):
        return json_response(error_body(str(exc), "invalid_request_error", param=exc.param,
                                        code=exc.code), 400)
    if isinstance(exc, AuthenticationFailed):
        return json_response(error_body(str(exc), "invalid_request_error",
                                        code="invalid_api_key"), 401)
    if isinstance(exc, NotFound):
        return json_response(error_body(str(exc), "invalid_request_error", code="not_found"), 404)
    if isinstance(exc, AccessNotApproved):
        return json_response(error_body(str(exc), "permission_denied", code=exc.code), 403)
    if isinstance(exc, LimitExceeded):
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        error_type = "insufficient_quota" if exc.code == "insufficient_quota" else "requests"
        return json_response(error_body(str(exc), error_type, code=exc.code), 429,
                             headers=headers)
    if isinstance(exc, IssuerUnavailable):
        # The message names only the issuer the caller's own token names: nothing to hide.
        return json_response(
            error_body(str(exc), "service_unavailable", code="unavailable"), 503,
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, BrokerUnavailable | DatabaseUnavailable):
        # The detail (host names, driver errors) is for operators; callers learn what
        # happened to their request and when to retry.
        log.warning("answering 503: %s", exc)
        what = "queue" if isinstance(exc, BrokerUnavailable) else "database"
        return json_response(
            error_body(f"The service's {what} is unavailable right now. Nothing was "
                       f"accepted; retry after {RETRY_AFTER_S}s.",
                       "service_unavailable", code="unavailable"),
            503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return json_response(error_body(str(exc), "server_error", code="internal_error"), 500)


def unexpected_error_response() -> Response:
    """500 in the envelope, for a bug: the traceback goes to the log, not to the caller."""
    return json_response(error_body(
        "The server had an error while processing your request; retry, and report the "
        "x-request-id if it persists.", "server_error", code="internal_error"), 500)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the edge in OpenAI's envelope, including routing errors."""

    async def on_sluice_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SluiceError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return json_response(error_body(message, "invalid_request_error", code=code),
                             exc.status_code)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        return json_response(
            error_body(f"Invalid value for '{param}': {first['msg']}", "invalid_request_error",
                       param=param), 400)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Starlette's outermost middleware calls this for any other exception and then
        # re-raises it, so the traceback still reaches the log; the caller gets the envelope.
        return unexpected_error_response()

    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(SluiceError, on_sluice_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
