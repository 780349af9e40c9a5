"""Ingress's part of a request's trace and log lines.

Each hot route (`POST /v1/chat/completions`, `/v1/embeddings`, `/v1/requests`) runs in a
server span named like the route, a child of the caller's span when it sent `traceparent`,
and in a log scope; once the request is admitted, `describe_request` names it on both. The
producer span and the record's `traceparent` are the publisher's (`ingress.publisher`).
Spans carry ids, tenant, model and status, never the prompt or the answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from opentelemetry import trace
from opentelemetry.trace import StatusCode
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import SluiceError
from broker.telemetry.logs import annotate, log_scope
from broker.telemetry.tracing import server_span
from ingress.envelope import error_response
from schemas import InferenceRequest

Endpoint = Callable[[Request], Awaitable[Response]]


def traced_route(path: str, endpoint: Endpoint) -> Endpoint:
    """`endpoint` (served at `POST path`) in a server span and a log scope of its own."""
    name = f"POST {path}"

    async def traced(request: Request) -> Response:
        with log_scope(), server_span(name, request.headers, {
            "http.request.method": "POST", "http.route": path, "url.path": path,
        }) as span:
            try:
                response = await endpoint(request)
            except SluiceError as exc:
                # Answered by the error handlers: a 4xx is the caller's, not our failure.
                _ended(span, error_response(exc).status_code, type(exc).__name__)
                raise
            _ended(span, response.status_code)
            return response

    return traced


def _ended(span: trace.Span, status: int, error: str | None = None) -> None:
    if not span.is_recording():
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", error or str(status))
        span.set_status(StatusCode.ERROR)


def describe_request(inference: InferenceRequest) -> None:
    """Name the admitted request on the current span and on the lines logged after."""
    annotate(request_id=inference.id, tenant=inference.tenant, model=inference.model)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({"sluice.request_id": inference.id,
                             "sluice.tenant": inference.tenant,
                             "sluice.model": inference.model})
