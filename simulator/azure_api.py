"""Azure OpenAI's wire format: OpenAI's bodies behind Azure's URLs, key and errors.

`POST /openai/deployments/{deployment}/chat/completions?api-version=…` (and
`…/embeddings`): the `api-key` header is required (401 without), a missing
`api-version` is 404 "Resource not found" and a malformed one 400, as Azure answers. The
deployment name is the model answered as, whatever the body says. Errors other than a
body's validation (which Azure relays in OpenAI's words) use Azure's envelope
`{"error": {"code": "<status>", "message"}}`; every answer carries
`x-ratelimit-remaining-requests|tokens`, and a 429 `retry-after` and `retry-after-ms`.
Entra ID bearer tokens are not simulated: a call without `api-key` is refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from simulator.asgi import Send, error_body, send_json
from simulator.dialects import Headers
from simulator.limits import LimitVerdict, retry_headers
from simulator.openai_api import serve_chat, serve_embeddings
from simulator.routes import Request, Route

if TYPE_CHECKING:
    from simulator.app import SimulatorApp

_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource.")


@dataclass(frozen=True, slots=True)
class AzureDialect:
    """Azure's envelope and headers for one operation (`ChatCompletions_Create`, …)."""

    operation: str
    api_version: str
    format: str = "azure"

    def error(self, status: int, message: str, *, retry_after_s: float | None = None,
              param: str | None = None, code: str | None = None) -> tuple[bytes, Headers]:
        """A 400 in OpenAI's words (relayed from the model); anything else in Azure's."""
        if status == 400:
            return error_body(message, param=param, code=code), []
        headers = retry_headers(retry_after_s) if retry_after_s is not None else []
        if status == 429:
            wait = math.ceil(retry_after_s or 0)
            message = (f"Requests to the {self.operation} Operation under Azure OpenAI API "
                       f"version {self.api_version} have exceeded the rate limit of your "
                       f"current pricing tier (simulated). Please retry after {wait} "
                       "seconds.")
        return _azure_error(str(status), message), headers

    def limit_headers(self, verdict: LimitVerdict) -> Headers:
        """Azure sends only the remaining requests and tokens."""
        headers: Headers = []
        for kind, counts in (("requests", verdict.requests), ("tokens", verdict.tokens)):
            if counts is not None:
                headers.append((f"x-ratelimit-remaining-{kind}".encode(),
                                str(counts[1]).encode()))
        return headers

    def fault_status(self, status: int) -> int:
        """Injected statuses are answered as they are."""
        return status


def _azure_error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


async def _checked(app: SimulatorApp, request: Request, send: Send,
                   operation: str) -> tuple[AzureDialect, Headers, str] | None:
    """Count the call and check its api-version and key; None once refused."""
    token = app.begin("azure")
    headers: Headers = [(b"apim-request-id", f"sim-{token}".encode()),
                        (b"x-request-id", f"req-sim-{token}".encode())]
    version = request.query("api-version")
    if version is None:
        app.state.record_error(404)
        await send_json(send, 404, _azure_error("404", "Resource not found"), headers)
        return None
    if not _API_VERSION.fullmatch(version):
        app.state.record_error(400)
        await send_json(send, 400, _azure_error("BadRequest", "API version not supported"),
                        headers)
        return None
    if not request.header("api-key"):
        app.state.record_error(401)
        await send_json(send, 401, _azure_error("401", _ACCESS_DENIED), headers)
        return None
    return AzureDialect(operation, version), headers, token


async def _chat_completions(app: SimulatorApp, request: Request, send: Send) -> None:
    checked = await _checked(app, request, send, "ChatCompletions_Create")
    if checked is not None:
        dialect, headers, token = checked
        await serve_chat(app, send, dialect, await request.body(), headers, token,
                         model=request.params["deployment"])


async def _embeddings(app: SimulatorApp, request: Request, send: Send) -> None:
    checked = await _checked(app, request, send, "Embeddings_Create")
    if checked is not None:
        dialect, headers, _ = checked
        await serve_embeddings(app, send, dialect, await request.body(), headers,
                               model=request.params["deployment"])


ROUTES = (
    Route("POST", "/openai/deployments/{deployment}/chat/completions", _chat_completions),
    Route("POST", "/openai/deployments/{deployment}/embeddings", _embeddings),
)
