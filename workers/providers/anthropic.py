"""Adapter for Anthropic's Messages API (`POST {base_url}/v1/messages`).

The translation is pure and lives in `anthropic_format`; this file does the calls. Every
failure becomes a sluicegate provider error as `workers.providers.calls` reads it (transport
errors, statuses, Anthropic's error envelope `{"type": "error", "error": {"type",
"message"}}` and its `error` stream event), or here (an undecodable answer). Anthropic's 529
(overloaded) is retriable there as every 5xx is. A request Anthropic cannot express fails
with `UnsupportedParameter` before any call. Nothing here retries or fails over; the worker
decides.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from broker.config import DeploymentConfig
from broker.errors import ProviderRetriable, UnsupportedParameter
from schemas import ChatCompletionRequest, EmbeddingRequest
from schemas.anthropic import DEFAULT_API_VERSION
from workers.providers import calls
from workers.providers.anthropic_format import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamTranslator,
    from_anthropic_message,
    to_anthropic_request,
)
from workers.providers.base import ChunkSink, ProviderResponse, translated


class AnthropicProvider:
    """Calls Anthropic's Messages API with the deployment's upstream model.

    Args:
        transport: The shared HTTP transport (its connection pool serves every deployment).
        deployment: The deployment's name in the configuration.
        config: Its configuration: `base_url` (default `https://api.anthropic.com`),
            `api_version` (the `anthropic-version` header, default 2023-06-01),
            `max_output_tokens` (the `max_tokens` of a request without a limit, else 4096:
            Anthropic requires one), `drop_params` (see `anthropic_format`).
        api_key: Sent as `x-api-key` (read from `api_key_env` at the edge).
    """

    name = "anthropic"

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        deployment: str,
        config: DeploymentConfig,
        api_key: str | None = None,
    ):
        self.deployment = deployment
        self._transport = transport
        self._model = config.model
        self._drop = tuple(config.drop_params)
        self._default_max_tokens = config.max_output_tokens or DEFAULT_MAX_TOKENS
        base_url = (config.endpoint() or "").rstrip("/")
        self._url = httpx.URL(base_url + "/v1/messages")
        version = (b"anthropic-version", (config.api_version or DEFAULT_API_VERSION).encode())
        self._headers, self._stream_headers = calls.json_headers(
            self._url, version, *([(b"x-api-key", api_key.encode())] if api_key else []))

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float) -> ProviderResponse:
        """Ask Anthropic for `body`'s answer, in the unified form.

        Raises:
            UnsupportedParameter: Anthropic cannot express `body` (nothing was sent).
            ProviderRetriable: Timeouts, connection errors, 408/409/429, 5xx, 529, 401/403/404
                (this deployment's fault), or a 2xx body that is not a message.
            ProviderRejected: Any other 4xx; the message is Anthropic's own.
        """
        payload = self._payload(body)
        started = time.perf_counter()
        response = await calls.read_answer(
            self._transport, self._request(payload, timeout_s, stream=False), self.deployment,
            timeout_s)
        if not response.is_success:
            calls.classify_status(response, self.deployment)
        try:
            completion = from_anthropic_message(orjson.loads(response.content))
        except (ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
            raise calls.undecodable(response, self.deployment, "an Anthropic message") from exc
        return ProviderResponse(
            completion=completion,
            provider_request_id=response.headers.get("request-id") or completion.id,
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=calls.rate_limit_headers(response.headers))

    async def stream(
        self, body: ChatCompletionRequest, *, timeout_s: float, on_chunk: ChunkSink
    ) -> ProviderResponse:
        """Ask for `body`'s answer as a stream and hand on each OpenAI chunk as it comes.

        The last chunk has no choices and carries the usage the call is billed by.

        Raises:
            UnsupportedParameter: As `complete`.
            ProviderRetriable: As `complete`; also a stream that breaks off (an `error`
                event, a dropped connection, or an end before `message_stop`).
            ProviderRejected: As `complete`.
        """
        payload = self._payload(body)
        payload["stream"] = True
        started = time.perf_counter()
        translator = AnthropicStreamTranslator(self.deployment)
        chunks: list[dict[str, Any]] = []
        response = await calls.open_stream(
            self._transport, self._request(payload, timeout_s, stream=True), self.deployment,
            timeout_s)
        if not response.is_success:
            calls.classify_status(response, self.deployment)
        try:
            async for data in calls.sse_data(response, self.deployment, timeout_s):
                for chunk in translator.feed(calls.stream_event(data, self.deployment)):
                    chunks.append(chunk)
                    await on_chunk(chunk)
                if translator.finished:
                    break
        finally:
            await response.aclose()
        if not translator.finished:
            raise ProviderRetriable(f"deployment '{self.deployment}' ended its stream before "
                                    "message_stop", deployment=self.deployment)
        completion = translator.assemble(chunks)
        return ProviderResponse(
            completion=completion,
            provider_request_id=response.headers.get("request-id") or completion.id,
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=calls.rate_limit_headers(response.headers))

    async def embed(self, body: EmbeddingRequest, *, timeout_s: float) -> ProviderResponse:
        """Anthropic has no embeddings API.

        Raises:
            UnsupportedParameter: Always, naming `model` (the worker tries the next
                deployment).
        """
        raise UnsupportedParameter(
            f"model: deployment '{self.deployment}' is Anthropic's Messages API, which has "
            "no embeddings", param="model", deployment=self.deployment)

    def _payload(self, body: ChatCompletionRequest) -> dict[str, Any]:
        return translated(lambda: to_anthropic_request(
            body, model=self._model, default_max_tokens=self._default_max_tokens,
            deployment=self.deployment, drop_params=self._drop), self.deployment)

    def _request(self, payload: dict[str, Any], timeout_s: float, *,
                 stream: bool) -> httpx.Request:
        return calls.build_request(
            "POST", self._url, self._stream_headers if stream else self._headers,
            orjson.dumps(payload), timeout_s, stream=stream)
