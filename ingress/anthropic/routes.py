"""`POST /v1/messages` and `/v1/messages/count_tokens`: Anthropic's door into the queue.

A Messages body is translated to our unified request (`request.py`) and from there takes
the OpenAI route's own path (`Ingress.admit`, `final_result`, `open_stream`): the same
admission, queue, failover and ledger, for whatever model is named, whichever provider
serves it. Only the answer is rendered back as Anthropic's (`response.py`, `stream.py`),
and every error in Anthropic's envelope (`errors.py`). The API key comes in `x-api-key`
(as Anthropic's SDKs send it) or as a bearer token.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from broker.errors import AuthenticationFailed, SluiceError, UnknownModel
from broker.tokens import count_request_prompt_tokens
from ingress.anthropic.errors import (
    error_body,
    result_failure,
    sluice_error_response,
    unexpected_error_response,
)
from ingress.anthropic.params import MessagesBody, MessagesRequest
from ingress.anthropic.request import to_chat_request
from ingress.anthropic.response import to_message
from ingress.anthropic.stream import MessageStream, message_events
from ingress.auth import authenticate, authenticate_key
from ingress.body import read_json_object, validate_body
from ingress.envelope import json_response
from ingress.services import Principal
from schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    InferenceRequest,
    InferenceResult,
    RequestStatus,
)
from schemas.streaming import stream_chunks

if TYPE_CHECKING:  # ingress.app registers these routes; importing it back would be a circle
    from ingress.app import Ingress

log = logging.getLogger("sluice.ingress")

Handler = Callable[[Request], Awaitable[Response]]


def anthropic_errors(handler: Handler) -> Handler:
    """`handler` answering every error in Anthropic's envelope."""

    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except SluiceError as exc:
            return sluice_error_response(exc)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.url.path)
            return unexpected_error_response()

    return handle


class MessagesDoor:
    """The handlers; `ingress` does the queueing, as for the OpenAI routes."""

    def __init__(self, ingress: Ingress):
        self.ingress = ingress
        self.services = ingress.services

    async def principal(self, request: Request) -> Principal:
        """The caller, by `x-api-key` (Anthropic's header) or `Authorization: Bearer`."""
        secret = request.headers.get("x-api-key", "").strip()
        if secret:
            return await authenticate_key(request, self.services.api_keys, secret)
        if request.headers.get("authorization"):
            return await authenticate(request, self.services.api_keys)
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in the 'x-api-key' header (or as "
            "'Authorization: Bearer <key>'); `sluice keys create` makes one.")

    def native(self, model: str) -> bool:
        """Whether only Anthropic serves `model` (its own parameters may then travel)."""
        chain = self.services.config.deployment_chain(model)
        return all(deployment.provider == "anthropic" for _, deployment in chain)

    def translate(self, principal: Principal, body: MessagesBody) -> ChatCompletionRequest:
        """`body` as our request, once the caller may use its model (404 otherwise, as
        for a model that does not exist)."""
        if body.model not in self.services.config.models or not principal.may_use(body.model):
            raise UnknownModel(body.model)
        return to_chat_request(body, native=self.native(body.model))

    def prompt_tokens(self, chat: ChatCompletionRequest) -> int:
        """The prompt's tokens as budgets count them (the primary deployment's encoding)."""
        config = self.services.config
        upstream = config.deployment_chain(chat.model)[0][1].model
        return count_request_prompt_tokens(chat, upstream, config.models[chat.model].encoding)

    async def messages(self, request: Request) -> Response:
        """`POST /v1/messages`, answered when final (or streamed)."""
        principal = await self.principal(request)
        data = await read_json_object(request, self.services.settings.max_body_bytes)
        body = validate_body(MessagesRequest, data)
        chat = self.translate(principal, body)
        inference = await self.ingress.admit(request, principal, chat, wait=True)
        headers = {"request-id": inference.id, "x-request-id": inference.id}
        if body.stream:
            return await self._stream(request, inference, body, chat, headers)
        result = await self.ingress.final_result(request, inference)
        if result is None:
            return self._still_running(request, inference)
        return self._final(result, body, headers)

    def _final(self, result: InferenceResult, body: MessagesRequest,
               headers: dict[str, str]) -> Response:
        if result.status is RequestStatus.SUCCEEDED and isinstance(result.completion,
                                                                   ChatCompletion):
            return json_response(to_message(result.completion, result.request_id,
                                            body.stop_sequences), headers=headers)
        status, error = result_failure(result)
        return json_response(error, status, headers=headers)

    async def _stream(self, request: Request, inference: InferenceRequest,
                      body: MessagesRequest, chat: ChatCompletionRequest,
                      headers: dict[str, str]) -> Response:
        opened = await self.ingress.open_stream(request, inference)
        if opened is None:
            return self._still_running(request, inference)
        first, events = opened
        headers = {**headers, "cache-control": "no-cache"}
        if isinstance(first, InferenceResult):  # ended before its first chunk
            if first.status is RequestStatus.SUCCEEDED and isinstance(first.completion,
                                                                      ChatCompletion):
                whole = _whole(MessageStream(inference.id, first.completion.model,
                                             body.stop_sequences, self.prompt_tokens(chat)),
                               first.completion)
                return StreamingResponse(whole, media_type="text/event-stream",
                                         headers=headers)
            return self._final(first, body, headers)
        model = first.chunk.get("model")
        translator = MessageStream(inference.id, model if isinstance(model, str) else
                                   body.model, body.stop_sequences, self.prompt_tokens(chat))
        sse = message_events(translator, first, events,
                             idle_timeout_s=self.services.settings.sync_timeout_s,
                             status_url=self.ingress.status_url(request, inference.id),
                             on_end=self.ingress.stream_ended(inference))
        return StreamingResponse(sse, media_type="text/event-stream", headers=headers)

    def _still_running(self, request: Request, inference: InferenceRequest) -> Response:
        """504 naming the status URL where the answer will be (as an OpenAI request's)."""
        self.ingress.accepted.remember(inference.id, inference.tenant, inference.model)
        url = self.ingress.status_url(request, inference.id)
        message = (f"No answer within {self.services.settings.sync_timeout_s:g}s; the request "
                   f"is still being processed. Poll GET {url} for its result.")
        return json_response(error_body(504, message, inference.id), 504,
                             headers={"Location": url, "request-id": inference.id,
                                      "x-request-id": inference.id})

    async def count_tokens(self, request: Request) -> Response:
        """`POST /v1/messages/count_tokens`: the prompt's tokens, counted offline with the
        primary deployment's encoding (exact for OpenAI model families; for other models,
        Claude's included, an estimate: see broker/tokens.py)."""
        principal = await self.principal(request)
        data = await read_json_object(request, self.services.settings.max_body_bytes)
        chat = self.translate(principal, validate_body(MessagesBody, data))
        return json_response({"input_tokens": self.prompt_tokens(chat)})


async def _whole(translator: MessageStream, completion: ChatCompletion) -> AsyncIterator[bytes]:
    """The events of an answer that arrived whole although streaming was asked for."""
    yield translator.start()
    for chunk in stream_chunks(completion, include_usage=True):
        yield translator.feed(chunk)
    yield translator.finish(completion.usage)
