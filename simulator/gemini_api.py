"""Google's Gemini API: `models/{model}:generateContent` and its relatives.

Served under `/v1beta/` and `/v1/` (the SDK's default): `:generateContent`,
`:streamGenerateContent` (`?alt=sse`: one `GenerateContentResponse` per `data:` line),
`:countTokens`, `:embedContent` and `:batchEmbedContents`. The key comes in the
`x-goog-api-key` header or the `key` query parameter; without one the call is refused
with 403 PERMISSION_DENIED, as Google does. Errors use Google's envelope
`{"error": {code, message, status, details?}}`; a 429 is RESOURCE_EXHAUSTED with a
`RetryInfo` detail (`retryDelay`), and Gemini sends no rate-limit headers. A cut stream
ends with an error object on its own `data:` line (503 UNAVAILABLE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from broker.tokens import count_request_prompt_tokens
from schemas import ChatCompletionRequest, Usage
from simulator.asgi import Send, send_json
from simulator.dialects import Headers
from simulator.gemini_contents import (
    BatchEmbedRequest,
    EmbedRequest,
    GenerateContentRequest,
    to_chat_request,
)
from simulator.gemini_responses import (
    embedding_values,
    generate_content_response,
    stream_responses,
)
from simulator.limits import LimitVerdict
from simulator.routes import Handler, Request, Route

if TYPE_CHECKING:
    from simulator.app import SimulatorApp

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
                504: "DEADLINE_EXCEEDED"}
BodyT = TypeVar("BodyT", bound=BaseModel)
_BodyAndChat = tuple[GenerateContentRequest, ChatCompletionRequest]
_NO_KEY = ("Method doesn't allow unregistered callers (callers without established "
           "identity). Please use API Key or other form of API consumer identity to call "
           "this API.")


def google_error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
    """Google's error envelope."""
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


@dataclass(frozen=True, slots=True)
class GeminiDialect:
    """Google's envelope; waits are a `RetryInfo` detail, not a header."""

    format: str = "gemini"

    def error(self, status: int, message: str, *, retry_after_s: float | None = None,
              param: str | None = None, code: str | None = None) -> tuple[bytes, Headers]:
        """The envelope, with `RetryInfo` or a `BadRequest` field violation when known."""
        details: list[dict[str, Any]] = []
        if retry_after_s is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{max(0, math.ceil(retry_after_s))}s"})
        if param is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [{"field": param, "description": message}]})
        if status == 429 and retry_after_s is not None:
            message = "Resource has been exhausted (e.g. check quota). (simulated)"
        return google_error(status, message, details), []

    def limit_headers(self, verdict: LimitVerdict) -> Headers:
        """Gemini announces no limits in headers."""
        return []

    def fault_status(self, status: int) -> int:
        """Injected statuses are answered as they are."""
        return status


GEMINI = GeminiDialect()


async def _checked(app: SimulatorApp, request: Request,
                   send: Send) -> tuple[Headers, str] | None:
    """Count the call and check its key; the call's headers and token, None once refused."""
    token = app.begin(GEMINI.format)
    headers: Headers = [(b"x-request-id", f"req-sim-{token}".encode())]
    if not (request.header("x-goog-api-key") or request.query("key")):
        app.state.record_error(403)
        await send_json(send, 403, google_error(403, _NO_KEY), headers)
        return None
    return headers, token


async def _read(app: SimulatorApp, request: Request, send: Send, headers: Headers,
                model: type[BodyT], unwrap: str | None = None) -> BodyT | None:
    """The body as `model` (the member `unwrap` of it, when there); None once refused."""
    raw = await request.body()
    try:
        if unwrap is None:
            return model.model_validate_json(raw)
        data = orjson.loads(raw or b"{}")
        inner = data.get(unwrap, data) if isinstance(data, dict) else data
        return model.model_validate(inner)
    except orjson.JSONDecodeError:
        message = "Invalid JSON payload received."
        await app.send_error(send, GEMINI, 400, message, headers)
    except ValidationError as exc:
        await app.refuse_invalid(send, GEMINI, exc, headers)
    return None


async def _read_chat(app: SimulatorApp, request: Request, send: Send, headers: Headers,
                     unwrap: str | None = None) -> _BodyAndChat | None:
    """The body as a `GenerateContentRequest` and in the brain's chat form; None once refused."""
    body = await _read(app, request, send, headers, GenerateContentRequest, unwrap)
    if body is None:
        return None
    try:
        return body, to_chat_request(body, request.params["model"])
    except ValidationError as exc:
        await app.refuse_invalid(send, GEMINI, exc, headers)
        return None


async def _generate(app: SimulatorApp, request: Request, send: Send, *, stream: bool) -> None:
    checked = await _checked(app, request, send)
    if checked is None:
        return
    headers, token = checked
    model = request.params["model"]
    read = await _read_chat(app, request, send, headers)
    if read is None:
        return
    body, chat = read
    if await app.inject_fault(send, GEMINI, model, headers):
        return
    config = body.generation_config
    stops = (config.stop_sequences if config else None) or []
    response, usage = generate_content_response(app.simulate(chat, token), stops,
                                                app.settings.encoding)
    if not await app.admit(send, GEMINI, usage.prompt_tokens + usage.completion_tokens,
                           headers):
        return
    await app.pause()
    app.state.record_success(usage)
    if stream:
        await _stream(app, send, response, headers, app.stream_cut_after(model))
    else:
        await send_json(send, 200, orjson.dumps(response), headers)


async def _stream(app: SimulatorApp, send: Send, response: dict[str, Any], headers: Headers,
                  cut_after: int | None) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *headers]})
    for number, chunk in enumerate(stream_responses(response)):
        if number == cut_after:
            app.state.record_injected("stream_cut")
            cut = google_error(503, "The model is overloaded. Please try again later. "
                                    "(simulated)")
            await send({"type": "http.response.body", "body": b"data: " + cut + b"\r\n\r\n"})
            return
        await send({"type": "http.response.body", "more_body": True,
                    "body": b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"})
    await send({"type": "http.response.body", "body": b""})


async def _generate_content(app: SimulatorApp, request: Request, send: Send) -> None:
    await _generate(app, request, send, stream=False)


async def _stream_generate_content(app: SimulatorApp, request: Request, send: Send) -> None:
    await _generate(app, request, send, stream=True)


async def _count_tokens(app: SimulatorApp, request: Request, send: Send) -> None:
    checked = await _checked(app, request, send)
    if checked is None:
        return
    headers, _ = checked
    # Either `contents` alone or a whole `generateContentRequest`.
    read = await _read_chat(app, request, send, headers, unwrap="generateContentRequest")
    if read is None:
        return
    _, chat = read
    tokens = count_request_prompt_tokens(chat, chat.model, app.settings.encoding)
    app.state.record_success(None)
    await send_json(send, 200, orjson.dumps({"totalTokens": tokens}), headers)


async def _embed(app: SimulatorApp, request: Request, send: Send, *, batch: bool) -> None:
    checked = await _checked(app, request, send)
    if checked is None:
        return
    headers, _ = checked
    model = request.params["model"]
    if batch:
        requests = await _read(app, request, send, headers, BatchEmbedRequest)
        if requests is None:
            return
        asked = requests.requests
    else:
        one = await _read(app, request, send, headers, EmbedRequest)
        if one is None:
            return
        asked = [one]
    if await app.inject_fault(send, GEMINI, model, headers):
        return
    vectors, tokens = embedding_values(asked, model, app.settings.encoding)
    if not await app.admit(send, GEMINI, tokens, headers):
        return
    await app.pause()
    app.state.record_success(Usage.model_construct(prompt_tokens=tokens, completion_tokens=0))
    answer = ({"embeddings": [{"values": values} for values in vectors]} if batch
              else {"embedding": {"values": vectors[0]}})
    await send_json(send, 200, orjson.dumps(answer), headers)


async def _embed_content(app: SimulatorApp, request: Request, send: Send) -> None:
    await _embed(app, request, send, batch=False)


async def _batch_embed_contents(app: SimulatorApp, request: Request, send: Send) -> None:
    await _embed(app, request, send, batch=True)


_METHODS: tuple[tuple[str, Handler], ...] = (
    ("generateContent", _generate_content),
    ("streamGenerateContent", _stream_generate_content),
    ("countTokens", _count_tokens),
    ("embedContent", _embed_content),
    ("batchEmbedContents", _batch_embed_contents),
)
ROUTES = tuple(Route("POST", f"/{version}/models/{{model}}:{method}", handler)
               for version in ("v1beta", "v1") for method, handler in _METHODS)
