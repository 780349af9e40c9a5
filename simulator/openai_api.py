"""OpenAI's wire format: `POST /v1/chat/completions` and `POST /v1/embeddings`.

`serve_chat` and `serve_embeddings` also serve Azure OpenAI (`simulator.azure_api`),
which speaks the same bodies with its own URLs, key header, errors and limit headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from schemas import ChatCompletion, ChatCompletionRequest, EmbeddingRequest, Usage
from simulator.asgi import Send, send_json
from simulator.dialects import OPENAI, Dialect, Headers
from simulator.embeddings import simulate_embeddings
from simulator.openai_rules import OpenAIParameterRules
from simulator.routes import Request, Route
from simulator.streaming import SSE_DONE, STREAM_CUT_ERROR, sse_event, stream_chunks

if TYPE_CHECKING:
    from simulator.app import SimulatorApp


async def serve_chat(app: SimulatorApp, send: Send, dialect: Dialect, raw: bytes,
                     headers: Headers, token: str, *, model: str | None = None) -> None:
    """Answer one chat completion in OpenAI's format.

    Args:
        app: The simulator.
        send: The ASGI send channel.
        dialect: How errors and limits are worded (OpenAI's or Azure's).
        raw: The request body.
        headers: The headers every answer carries (limit headers are added).
        token: The call's token (the completion id is `chatcmpl-sim-<token>`).
        model: The model to answer as, replacing the body's (Azure's deployment name).
    """
    try:
        if model is None:
            body = ChatCompletionRequest.model_validate_json(raw)
        else:
            body = ChatCompletionRequest.model_validate(_with_model(raw, model))
        OpenAIParameterRules.model_validate(body.model_extra or {})
    except ValidationError as exc:
        await app.refuse_invalid(send, dialect, exc, headers)
        return
    if await app.inject_fault(send, dialect, body.model, headers):
        return
    completion = app.simulate(body, f"chatcmpl-sim-{token}")
    usage = completion.usage
    spent = usage.prompt_tokens + usage.completion_tokens if usage else 0
    if not await app.admit(send, dialect, spent, headers):
        return
    await app.pause()
    app.state.record_success(completion.usage)
    if body.stream:
        await _stream(app, send, body, completion, headers)
        return
    await send_json(send, 200, completion.model_dump_json().encode(), headers)


async def _stream(app: SimulatorApp, send: Send, body: ChatCompletionRequest,
                  completion: ChatCompletion, headers: Headers) -> None:
    chunks = stream_chunks(completion, include_usage=body.wants_stream_usage())
    cut_after = app.stream_cut_after(body.model)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"), *headers]})
    for number, chunk in enumerate(chunks):
        if cut_after is not None and number == cut_after:
            # As a provider failing mid-answer: an error event, and no [DONE].
            app.state.record_injected("stream_cut")
            await send({"type": "http.response.body", "body": sse_event(STREAM_CUT_ERROR)})
            return
        await send({"type": "http.response.body", "body": sse_event(chunk), "more_body": True})
    await send({"type": "http.response.body", "body": SSE_DONE})


async def serve_embeddings(app: SimulatorApp, send: Send, dialect: Dialect, raw: bytes,
                           headers: Headers, *, model: str | None = None) -> None:
    """Answer one embeddings call in OpenAI's format (`model` as in `serve_chat`)."""
    try:
        if model is None:
            body = EmbeddingRequest.model_validate_json(raw)
        else:
            body = EmbeddingRequest.model_validate(_with_model(raw, model))
    except ValidationError as exc:
        await app.refuse_invalid(send, dialect, exc, headers)
        return
    if await app.inject_fault(send, dialect, body.model, headers):
        return
    answer = simulate_embeddings(body, upstream_model=body.model,
                                 encoding=app.settings.encoding)
    tokens = answer.usage.prompt_tokens if answer.usage else 0
    if not await app.admit(send, dialect, tokens, headers):
        return
    await app.pause()
    app.state.record_success(Usage.model_construct(prompt_tokens=tokens, completion_tokens=0))
    await send_json(send, 200, answer.model_dump_json().encode(), headers)


def _with_model(raw: bytes, model: str) -> Any:
    """The parsed body with `model` set (Azure names the model in the URL, not the body)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")  # refused by validation as not an object
    if isinstance(data, dict):
        data["model"] = model
    return data


def _request_headers(token: str) -> Headers:
    # One id names the call in the header and the body, as a real provider's logs would.
    return [(b"x-request-id", f"req-sim-{token}".encode())]


async def _chat_completions(app: SimulatorApp, request: Request, send: Send) -> None:
    token = app.begin(OPENAI.format)
    await serve_chat(app, send, OPENAI, await request.body(), _request_headers(token), token)


async def _embeddings(app: SimulatorApp, request: Request, send: Send) -> None:
    token = app.begin(OPENAI.format)
    await serve_embeddings(app, send, OPENAI, await request.body(), _request_headers(token))


ROUTES = (
    Route("POST", "/v1/chat/completions", _chat_completions),
    Route("POST", "/v1/embeddings", _embeddings),
)
