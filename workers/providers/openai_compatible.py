"""Adapter for any OpenAI-compatible chat completions API: OpenAI, vLLM, Ollama, llama.cpp.

Every failure becomes a sluicegate provider error in this file alone: transport errors in
`_translate_transport`, HTTP statuses in `_translate_status`, an undecodable success body
in `complete`. Nothing here retries or fails over; the worker decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn, TypeVar

import httpx
import orjson
from pydantic import ValidationError

from broker.config import DeploymentConfig
from broker.errors import ConfigError, ProviderRejected, ProviderRetriable
from schemas import ChatCompletion, ChatCompletionRequest, EmbeddingRequest, EmbeddingResponse
from schemas.streaming import assemble_completion
from workers.providers.aiohttp_transport import STREAM_RESPONSE
from workers.providers.base import ChunkSink, ProviderResponse

_RATE_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after")
# 408 (request timeout) and 409 (conflict, e.g. OpenAI's "busy, try again") are transient.
log = logging.getLogger("sluice.providers")

_RETRIABLE_CLIENT_STATUSES = frozenset({408, 409, 429})
# The deployment itself is wrong (our key expired or lacks access, the upstream model or URL
# does not exist): another deployment may well answer, and the provider's words (which can
# quote part of our key) are for operators, not for the tenant whose request it was.
_DEPLOYMENT_FAULT_STATUSES = frozenset({401, 403, 404})
_MAX_MESSAGE_CHARS = 500
USER_AGENT = "sluicegate"
AnswerT = TypeVar("AnswerT", ChatCompletion, EmbeddingResponse)
_TIMEOUT_PHASES = ("connect", "read", "write", "pool")


class OpenAICompatibleProvider:
    """Calls `POST {base_url}/chat/completions` with the deployment's upstream model.

    Args:
        transport: The shared HTTP transport (its connection pool serves every deployment).
        deployment: The deployment's name in the configuration.
        config: Its configuration; `base_url` looks like `http://host:8000/v1`.
        api_key: The secret sent as a bearer token (read from `api_key_env` at the edge).

    It sends through the transport, not an `httpx.AsyncClient`: a client's per-call
    redirect, auth, cookie and hook machinery cost a third of each call's CPU here, and
    its shared cookie jar would carry one provider's cookies into every tenant's calls.
    Redirects are this deployment's misconfiguration either way (see `_translate_status`).
    """

    name = "openai"

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        deployment: str,
        config: DeploymentConfig,
        api_key: str | None = None,
    ):
        if not config.base_url:
            raise ConfigError(f"deployments.{deployment}.base_url: required for 'openai'")
        self.deployment = deployment
        self._transport = transport
        self._model = config.model
        self._drop = tuple(config.drop_params)
        self._max_output_tokens = config.max_output_tokens
        self._allowed = (None if config.allowed_params is None
                         else {"model", "messages", *config.allowed_params})
        # Appending, not httpx.URL.join: join would drop a base path without trailing "/".
        # Parsed once: re-parsing the URL and headers on every call showed in the profile.
        self._url = httpx.URL(config.base_url.rstrip("/") + "/chat/completions")
        self._embeddings_url = httpx.URL(config.base_url.rstrip("/") + "/embeddings")
        # Host is set here and the body given as a stream, so httpx builds no headers per
        # call: its defaults for `content=` (and reading it back) showed in the profile.
        headers = [
            (b"host", self._url.netloc),
            (b"accept", b"application/json"),
            (b"content-type", b"application/json"),
            (b"user-agent", USER_AGENT.encode()),
        ]
        if api_key:
            headers.append((b"authorization", f"Bearer {api_key}".encode()))
        self._headers = headers
        self._stream_headers = [(name, b"text/event-stream" if name == b"accept" else value)
                                for name, value in headers]

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float) -> ProviderResponse:
        """Send `body` upstream and return the provider's completion.

        Raises:
            ProviderRetriable: Timeouts, connection errors, 408/409/429, 5xx, or a 2xx body
                that is not a chat completion.
            ProviderRejected: Any other 4xx; the message is the provider's own.
        """
        started = time.perf_counter()
        response = await self._post(self._payload(body), timeout_s, self._url)
        completion = self._parse(ChatCompletion, response, "a chat completion")
        return ProviderResponse(
            completion=completion,
            provider_request_id=response.headers.get("x-request-id") or completion.id,
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=_rate_limit_headers(response.headers),
        )

    async def embed(self, body: EmbeddingRequest, *, timeout_s: float) -> ProviderResponse:
        """Send `body` to `{base_url}/embeddings` and return the provider's vectors.

        Raises:
            ProviderRetriable: As `complete`.
            ProviderRejected: As `complete`.
        """
        started = time.perf_counter()
        response = await self._post(self._payload(body), timeout_s, self._embeddings_url)
        answer = self._parse(EmbeddingResponse, response, "an embeddings list")
        return ProviderResponse(
            completion=answer, provider_request_id=response.headers.get("x-request-id"),
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=_rate_limit_headers(response.headers))

    async def _post(self, payload: dict[str, Any], timeout_s: float,
                    url: httpx.URL) -> httpx.Response:
        """POST `payload` and read the whole answer; a non-2xx one raises (translated)."""
        try:
            # httpx's timeout bounds each phase (connect, each read); asyncio's bounds the
            # whole call, so a provider trickling bytes cannot outlive the deadline.
            async with asyncio.timeout(timeout_s):
                request = self._request(payload, timeout_s, stream=False, url=url)
                response = await self._transport.handle_async_request(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()  # the connection goes back to the pool
        except (httpx.RequestError, TimeoutError) as exc:
            self._translate_transport(exc, timeout_s)
        if not response.is_success:
            self._translate_status(response)
        return response

    def _parse(self, model: type[AnswerT], response: httpx.Response, what: str) -> AnswerT:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ProviderRetriable(
                f"deployment '{self.deployment}' answered {response.status_code} with a body "
                f"that is not {what}",
                status_code=response.status_code,
                deployment=self.deployment,
            ) from exc

    async def stream(
        self, body: ChatCompletionRequest, *, timeout_s: float, on_chunk: ChunkSink
    ) -> ProviderResponse:
        """Send `body` with `stream: true` and hand on each chunk as it arrives.

        The provider is always asked for its usage chunk (`stream_options.include_usage`):
        it is what the call is billed by, whether or not the client wants to see it.

        Raises:
            ProviderRetriable: As `complete`; also a stream that breaks off (an error
                event, a dropped connection, or an end without `[DONE]`).
            ProviderRejected: As `complete`.
        """
        payload = self._payload(body)
        payload["stream"] = True
        payload["stream_options"] = {**(payload.get("stream_options") or {}),
                                     "include_usage": True}
        started = time.perf_counter()
        chunks: list[dict[str, Any]] = []
        request = self._request(payload, timeout_s, stream=True)
        try:
            # The read timeout bounds each wait for the next bytes; the caller bounds the
            # whole answer (a long answer legitimately streams for minutes).
            response = await self._transport.handle_async_request(request)
        except httpx.RequestError as exc:
            self._translate_transport(exc, timeout_s)
        try:
            if not response.is_success:
                await response.aread()
                self._translate_status(response)
            finished = False
            async for data in _sse_data(response):
                if data == "[DONE]":
                    finished = True
                    break
                chunk = self._parse_chunk(data)
                chunks.append(chunk)
                await on_chunk(chunk)
        except httpx.RequestError as exc:
            self._translate_transport(exc, timeout_s)
        finally:
            await response.aclose()
        if not finished:
            raise ProviderRetriable(f"deployment '{self.deployment}' ended its stream before "
                                    "[DONE]", deployment=self.deployment)
        completion = assemble_completion(chunks)
        return ProviderResponse(
            completion=completion,
            provider_request_id=response.headers.get("x-request-id") or completion.id,
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=_rate_limit_headers(response.headers),
        )

    def _parse_chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ProviderRetriable(f"deployment '{self.deployment}' streamed an event that "
                                    "is not JSON", deployment=self.deployment) from exc
        if not isinstance(chunk, dict):
            raise ProviderRetriable(f"deployment '{self.deployment}' streamed an event that "
                                    "is not a chunk", deployment=self.deployment)
        if chunk.get("error") is not None:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise ProviderRetriable(f"deployment '{self.deployment}' broke off its stream: "
                                    f"{message}", deployment=self.deployment)
        return chunk

    def _payload(self, body: ChatCompletionRequest | EmbeddingRequest) -> dict[str, Any]:
        payload = body.model_dump(mode="json", exclude_none=True)
        payload["model"] = self._model
        if (self._max_output_tokens is not None and isinstance(body, ChatCompletionRequest)
                and body.output_limit() is None):
            # What the budget held for this request (broker/estimates.py): the answer can
            # never cost more than was reserved for it.
            payload["max_completion_tokens"] = self._max_output_tokens
        for name in self._drop:
            payload.pop(name, None)
        if self._allowed is not None:
            payload = {name: value for name, value in payload.items() if name in self._allowed}
        return payload

    def _request(self, payload: dict[str, Any], timeout_s: float, *,
                 stream: bool, url: httpx.URL | None = None) -> httpx.Request:
        content = orjson.dumps(payload)
        extensions: dict[str, Any] = {
            # What httpx.Timeout(timeout_s).as_dict() gives, without the object.
            "timeout": dict.fromkeys(_TIMEOUT_PHASES, timeout_s)}
        if stream:
            extensions[STREAM_RESPONSE] = True
        return httpx.Request(
            "POST", url or self._url,
            headers=[*(self._stream_headers if stream else self._headers),
                     (b"content-length", b"%d" % len(content))],
            stream=httpx.ByteStream(content),
            extensions=extensions,
        )

    def _translate_transport(
        self, exc: httpx.RequestError | TimeoutError, timeout_s: float
    ) -> NoReturn:
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            message = f"deployment '{self.deployment}' timed out after {timeout_s}s"
        else:
            message = f"deployment '{self.deployment}' unreachable: {type(exc).__name__}: {exc}"
        raise ProviderRetriable(message, deployment=self.deployment) from exc

    def _translate_status(self, response: httpx.Response) -> NoReturn:
        status = response.status_code
        if status in _DEPLOYMENT_FAULT_STATUSES:
            log.warning("deployment %r answered %d: %s; check its API key, upstream model and "
                        "base_url", self.deployment, status, _error_message(response))
            raise ProviderRetriable(
                f"deployment '{self.deployment}' refused sluicegate's call ({status}); "
                "an operator must check its API key, upstream model and base_url",
                status_code=status, deployment=self.deployment)
        message = f"deployment '{self.deployment}' answered {status}: {_error_message(response)}"
        if status in _RETRIABLE_CLIENT_STATUSES or not 400 <= status < 500:
            # Not a 4xx: 5xx is the provider's trouble; a redirect is this deployment's
            # misconfiguration. Either way another try or deployment may succeed.
            raise ProviderRetriable(
                message,
                status_code=status,
                deployment=self.deployment,
                retry_after_s=_retry_after_s(response.headers),
                rate_limit_headers=_rate_limit_headers(response.headers),
            )
        raise ProviderRejected(message, status_code=status, deployment=self.deployment)


def _error_message(response: httpx.Response) -> str:
    """The provider's own words: OpenAI's `{"error": {"message"}}`, Ollama's `{"error"}`."""
    try:
        data: Any = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    text = response.text.strip()
    return text[:_MAX_MESSAGE_CHARS] if text else response.reason_phrase


def _rate_limit_headers(headers: httpx.Headers) -> dict[str, str]:
    """The `x-ratelimit-*`, `anthropic-ratelimit-*` and `retry-after*` headers."""
    return {name: value for name, value in headers.items()
            if name.startswith(_RATE_LIMIT_PREFIXES)}


def _retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # HTTP dates are GMT
    return max(0.0, moment.timestamp() - time.time())


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined; comments skipped)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)
