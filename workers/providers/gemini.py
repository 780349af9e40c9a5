"""Adapter for Google's Gemini API (`generateContent`, `streamGenerateContent`,
`batchEmbedContents`), speaking sluicegate's unified OpenAI form on the other side.

The translation is pure and lives beside this file (`gemini_format.py` for requests, with
the table of every parameter's fate; `gemini_answers.py` for answers; `gemini_embeddings.py`).
Every failure becomes a sluicegate provider error as `workers.providers.calls` reads it
(transport errors, statuses, Google's envelope `{"error": {code, message, status,
details}}`), told what only Google's `details` say in `_refused`; an undecodable answer
becomes one in `_decoded`:

| Google answered | sluicegate raises |
|---|---|
| 429 `RESOURCE_EXHAUSTED` | `ProviderRetriable`, with `retry_after_s` (1) |
| 408, 409, 5xx (`INTERNAL`, `UNAVAILABLE`, `DEADLINE_EXCEEDED`) | `ProviderRetriable` |
| 401, 403, 404 | `ProviderRetriable`, a deployment fault (2) |
| 400 with `API_KEY_INVALID`, 400 `FAILED_PRECONDITION` | `ProviderRetriable`, as 401 (3) |
| any other 4xx (`INVALID_ARGUMENT`, ...) | `ProviderRejected`, with Google's message |
| a stream ending before every candidate's `finishReason` | `ProviderRetriable` |
| an `error` event in a stream | `ProviderRetriable` |

1. From `error.details[]`' `RetryInfo.retryDelay` (`"30s"`), else `Retry-After`.
2. Our key, model or account is wrong: another deployment may answer, and Google's words
   (which can quote our key) are logged for operators, not told to the tenant.
3. Google answers an invalid key, and a project without billing or in an unserved region,
   with 400 where others say 401 or 403: the request is not at fault.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import httpx
import orjson
from pydantic import ValidationError

from broker.config import DeploymentConfig
from broker.errors import ProviderRetriable
from broker.tokens import count_embedding_tokens
from schemas import ChatCompletionRequest, EmbeddingRequest
from workers.providers import calls
from workers.providers.base import ChunkSink, ProviderResponse, translated
from workers.providers.gemini_embeddings import from_gemini_embeddings, to_gemini_embeddings
from workers.providers.gemini_format import (
    GeminiStreamTranslator,
    from_gemini_response,
    to_gemini_request,
)

DEFAULT_API_VERSION = "v1beta"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_CHECK = "its API key, upstream model, base_url and Google account"


class GeminiProvider:
    """Calls `POST {base_url}/{api_version}/models/{model}:generateContent` and friends.

    Args:
        transport: The shared HTTP transport (its connection pool serves every deployment).
        deployment: The deployment's name in the configuration.
        config: Its configuration: `base_url` (default Google's public endpoint),
            `api_version` (default `v1beta`), `model` (`gemini-2.5-flash`, or a full
            resource name such as `tunedModels/...`).
        api_key: Sent as `x-goog-api-key` (read from `api_key_env` at the edge).
    """

    name = "gemini"

    def __init__(self, transport: httpx.AsyncBaseTransport, deployment: str,
                 config: DeploymentConfig, api_key: str | None = None):
        self.deployment = deployment
        self._transport = transport
        self._config = config
        self._model = config.model
        self._model_path = config.model if "/" in config.model else f"models/{config.model}"
        root = "/".join(((config.endpoint() or "").rstrip("/"),
                         config.api_version or DEFAULT_API_VERSION, self._model_path))
        self._generate_url = httpx.URL(root + ":generateContent")
        self._stream_url = httpx.URL(root + ":streamGenerateContent", params={"alt": "sse"})
        self._embed_url = httpx.URL(root + ":batchEmbedContents")
        # One host for the three URLs: they differ only in their paths.
        self._headers, self._stream_headers = calls.json_headers(
            self._generate_url, *([(b"x-goog-api-key", api_key.encode())] if api_key else []))

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float) -> ProviderResponse:
        """Answer `body` with one `generateContent` call.

        Raises:
            UnsupportedParameter: Gemini cannot express a parameter (before any call).
            ProviderRetriable: As the module's table says; also an undecodable answer.
            ProviderRejected: As the module's table says.
        """
        payload = translated(lambda: to_gemini_request(
            body, deployment=self._config, name=self.deployment), self.deployment)
        started = time.perf_counter()
        response = await self._post(payload, timeout_s, self._generate_url)
        data = self._decoded(response)
        try:
            completion = from_gemini_response(data, model=self._model)
        except (ValueError, ValidationError) as exc:  # ValidationError is a ValueError
            raise calls.undecodable(response, self.deployment, "a chat completion") from exc
        return ProviderResponse(
            completion=completion, provider_request_id=data.get("responseId"),
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=calls.rate_limit_headers(response.headers))

    async def stream(self, body: ChatCompletionRequest, *, timeout_s: float,
                     on_chunk: ChunkSink) -> ProviderResponse:
        """Answer `body` through `:streamGenerateContent?alt=sse`, handing on OpenAI chunks.

        Gemini's stream has no `[DONE]`: it ends when the connection closes, so it is whole
        only if every candidate said why it finished. The usage chunk (from the last
        `usageMetadata`) goes last, always.

        Raises:
            UnsupportedParameter: As `complete`.
            ProviderRetriable: As `complete`; also a stream that breaks off.
            ProviderRejected: As `complete` (only before the first chunk).
        """
        payload = translated(lambda: to_gemini_request(
            body, deployment=self._config, name=self.deployment), self.deployment)
        translator = GeminiStreamTranslator(model=self._model)
        chunks: list[dict[str, Any]] = []
        started = time.perf_counter()
        response = await calls.open_stream(
            self._transport, self._request(payload, timeout_s, self._stream_url, stream=True),
            self.deployment, timeout_s)
        if not response.is_success:
            self._refused(response)
        try:
            async for data in calls.sse_data(response, self.deployment, timeout_s):
                for chunk in translator.translate(calls.stream_event(data, self.deployment)):
                    chunks.append(chunk)
                    await on_chunk(chunk)
        finally:
            await response.aclose()
        if not translator.finished:
            raise ProviderRetriable(f"deployment '{self.deployment}' ended its stream before "
                                    "a finishReason", deployment=self.deployment)
        usage = translator.usage_chunk()
        if usage is not None:
            chunks.append(usage)
            await on_chunk(usage)
        completion = translator.completion(chunks)
        return ProviderResponse(
            completion=completion, provider_request_id=translator.response_id,
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=calls.rate_limit_headers(response.headers))

    async def embed(self, body: EmbeddingRequest, *, timeout_s: float) -> ProviderResponse:
        """Embed `body`'s input with one `batchEmbedContents` call.

        Raises:
            UnsupportedParameter: Gemini cannot express a parameter (before any call).
            ProviderRetriable: As `complete`.
            ProviderRejected: As `complete`.
        """
        payload = to_gemini_embeddings(body, model_path=self._model_path, name=self.deployment)
        started = time.perf_counter()
        response = await self._post(payload, timeout_s, self._embed_url)
        data = self._decoded(response)
        try:
            answer = from_gemini_embeddings(
                data, body=body, model=self._model,
                estimated_tokens=count_embedding_tokens(body, self._model))
        except (ValueError, KeyError, TypeError) as exc:
            raise calls.undecodable(response, self.deployment, "an embeddings list") from exc
        return ProviderResponse(
            completion=answer, provider_request_id=None,
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers=calls.rate_limit_headers(response.headers))

    async def _post(self, payload: dict[str, Any], timeout_s: float,
                    url: httpx.URL) -> httpx.Response:
        """POST `payload` and read the whole answer; a non-2xx one raises (translated)."""
        response = await calls.read_answer(
            self._transport, self._request(payload, timeout_s, url), self.deployment, timeout_s)
        if not response.is_success:
            self._refused(response)
        return response

    def _request(self, payload: dict[str, Any], timeout_s: float, url: httpx.URL, *,
                 stream: bool = False) -> httpx.Request:
        return calls.build_request("POST", url,
                                   self._stream_headers if stream else self._headers,
                                   orjson.dumps(payload), timeout_s, stream=stream)

    def _decoded(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise calls.undecodable(response, self.deployment, "JSON") from exc
        if not isinstance(data, dict):
            raise calls.undecodable(response, self.deployment, "a JSON object")
        return data

    def _refused(self, response: httpx.Response) -> NoReturn:
        """Raise what a non-2xx answer means, with what only Google's `details` say."""
        body = calls.decoded_body(response.content)
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        details = _details(error)
        calls.classify_status(response, self.deployment, check=_CHECK,
                              deployment_fault=_configuration_fault(error, details),
                              retry_delay_s=_retry_delay_s(details))


def _details(error: dict[str, Any]) -> list[dict[str, Any]]:
    details = error.get("details")
    return [item for item in details if isinstance(item, dict)] if isinstance(details,
                                                                               list) else []


def _configuration_fault(error: dict[str, Any], details: list[dict[str, Any]]) -> bool:
    """A 400 that blames our key or account (an invalid key, billing or region), not the
    request: Google answers those with 400 where others use 401/403."""
    return error.get("status") == "FAILED_PRECONDITION" or any(
        item.get("reason") == "API_KEY_INVALID" for item in details)


def _retry_delay_s(details: list[dict[str, Any]]) -> float | None:
    """`RetryInfo.retryDelay` of Google's error details ("30s", "1.5s"), in seconds."""
    for item in details:
        delay = item.get("retryDelay")
        if item.get("@type") == _RETRY_INFO and isinstance(delay, str):
            try:
                return max(0.0, float(delay.removesuffix("s")))
            except ValueError:
                return None
    return None
