"""Adapter for any OpenAI-compatible chat completions API: OpenAI, vLLM, Ollama, llama.cpp.

Every failure becomes a sluicegate provider error as `workers.providers.calls` reads it
(transport errors and statuses, the same for every vendor), or here (an undecodable
success body). Nothing here retries or fails over; the worker decides.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import ValidationError

from broker.config import DeploymentConfig
from broker.errors import ConfigError, ProviderRetriable
from schemas import ChatCompletion, ChatCompletionRequest, EmbeddingRequest, EmbeddingResponse
from schemas.streaming import assemble_completion
from workers.providers.base import ChunkSink, ProviderResponse
from workers.providers.calls import (
    build_request,
    classify_status,
    json_headers,
    open_stream,
    rate_limit_headers,
    read_answer,
    sse_data,
    stream_event,
    undecodable,
)

AnswerT = TypeVar("AnswerT", ChatCompletion, EmbeddingResponse)


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
    Redirects are this deployment's misconfiguration either way (see `calls.classify_status`).
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
            raise ConfigError(f"deployments.{deployment}.base_url: required for '{self.name}'")
        self.deployment = deployment
        self._transport = transport
        self._model = config.model
        self._drop = tuple(config.drop_params)
        self._max_output_tokens = config.max_output_tokens
        self._allowed = (None if config.allowed_params is None
                         else {"model", "messages", *config.allowed_params})
        # Parsed once: re-parsing the URL and headers on every call showed in the profile.
        self._url = self._endpoint_url(config, "/chat/completions")
        self._embeddings_url = self._endpoint_url(config, "/embeddings")
        # Host is set here and the body given as a stream, so httpx builds no headers per
        # call: its defaults for `content=` (and reading it back) showed in the profile.
        self._headers, self._stream_headers = json_headers(
            self._url, *([self._credentials(api_key)] if api_key else []))

    def _endpoint_url(self, config: DeploymentConfig, operation: str) -> httpx.URL:
        """Where `operation` (`/chat/completions`, `/embeddings`) is: under `base_url`."""
        # Appending, not httpx.URL.join: join would drop a base path without trailing "/".
        return httpx.URL((config.base_url or "").rstrip("/") + operation)

    def _credentials(self, api_key: str) -> tuple[bytes, bytes]:
        """The header carrying the deployment's key: a bearer token."""
        return (b"authorization", f"Bearer {api_key}".encode())

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float) -> ProviderResponse:
        """Send `body` upstream and return the provider's completion.

        Raises:
            ProviderRetriable: Timeouts, connection errors, 408/409/429, 5xx, 401/403/404
                (this deployment's fault), or a 2xx body that is not a chat completion.
            ProviderRejected: Any other 4xx; the message is the provider's own.
        """
        started = time.perf_counter()
        response = await read_answer(
            self._transport, self._request(self._payload(body), timeout_s, self._url),
            self.deployment, timeout_s)
        if not response.is_success:
            classify_status(response, self.deployment)
        completion = self._parse(ChatCompletion, response, "a chat completion")
        return ProviderResponse(
            completion=completion,
            provider_request_id=response.headers.get("x-request-id") or completion.id,
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=rate_limit_headers(response.headers),
        )

    async def embed(self, body: EmbeddingRequest, *, timeout_s: float) -> ProviderResponse:
        """Send `body` to `{base_url}/embeddings` and return the provider's vectors.

        Raises:
            ProviderRetriable: As `complete`.
            ProviderRejected: As `complete`.
        """
        started = time.perf_counter()
        response = await read_answer(
            self._transport, self._request(self._payload(body), timeout_s, self._embeddings_url),
            self.deployment, timeout_s)
        if not response.is_success:
            classify_status(response, self.deployment)
        answer = self._parse(EmbeddingResponse, response, "an embeddings list")
        return ProviderResponse(
            completion=answer, provider_request_id=response.headers.get("x-request-id"),
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=rate_limit_headers(response.headers))

    def _parse(self, model: type[AnswerT], response: httpx.Response, what: str) -> AnswerT:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise undecodable(response, self.deployment, what) from exc

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
        response = await open_stream(
            self._transport, self._request(payload, timeout_s, self._url, stream=True),
            self.deployment, timeout_s)
        if not response.is_success:
            classify_status(response, self.deployment)
        try:
            finished = False
            async for data in sse_data(response, self.deployment, timeout_s):
                if data == "[DONE]":
                    finished = True
                    break
                chunk = stream_event(data, self.deployment)
                chunks.append(chunk)
                await on_chunk(chunk)
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
            rate_limit_headers=rate_limit_headers(response.headers),
        )

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

    def _request(self, payload: dict[str, Any], timeout_s: float, url: httpx.URL, *,
                 stream: bool = False) -> httpx.Request:
        return build_request("POST", url, self._stream_headers if stream else self._headers,
                             orjson.dumps(payload), timeout_s, stream=stream)
