"""Provider calls measured the OpenTelemetry GenAI way: duration, time to first chunk, tokens.

`metered(providers, config)` wraps every deployment's adapter once, where the pool builds
its processor, so each call is measured wherever it is made and the adapters and the
processor stay free of metrics. A call the adapter refuses before sending anything
(`UnsupportedParameter`) was no operation and is not measured.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from typing import Any

from broker.config import SluiceConfig
from broker.errors import UnsupportedParameter
from broker.metrics.instruments import OPERATION_DURATION, TIME_TO_FIRST_CHUNK, TOKEN_USAGE
from schemas import ChatCompletionRequest, EmbeddingRequest
from workers.providers import Provider, ProviderResponse
from workers.providers.base import ChunkSink

# Our adapter kinds under the semantic conventions' well-known `gen_ai.provider.name`
# values, where they differ; the others (openai, anthropic, simulated) keep their names.
PROVIDER_NAMES = {"gemini": "gcp.gemini", "azure-openai": "azure.ai.openai"}


def metered(providers: Mapping[str, Provider], config: SluiceConfig) -> dict[str, Provider]:
    """Each provider wrapped in a `MeteredProvider` (the deployment's upstream model names
    `gen_ai_request_model`)."""
    return {
        name: MeteredProvider(provider, config.deployments[name].model
                              if name in config.deployments else name)
        for name, provider in providers.items()
    }


def error_type(exc: BaseException) -> str:
    """The semantic conventions' `error.type`: the HTTP status when there was one, else
    the exception's class (both bounded sets)."""
    status = getattr(exc, "status_code", None)
    return str(status) if isinstance(status, int) else type(exc).__name__


class MeteredProvider:
    """A `Provider` that records every call it passes on (see the module)."""

    def __init__(self, inner: Provider, request_model: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.deployment = inner.deployment
        self._request_model = request_model
        self._provider_name = PROVIDER_NAMES.get(inner.name, inner.name)

    def _labels(self, operation: str) -> tuple[str, str, str, str]:
        return operation, self._provider_name, self._request_model, self.deployment

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float,
                       ) -> ProviderResponse:
        """See `Provider.complete`."""
        return await self._timed("chat", time.perf_counter(),
                                 self.inner.complete(body, timeout_s=timeout_s))

    async def stream(self, body: ChatCompletionRequest, *, timeout_s: float,
                     on_chunk: ChunkSink) -> ProviderResponse:
        """See `Provider.stream`; the first chunk's arrival is timed too."""
        started = time.perf_counter()
        first = True

        async def timed(chunk: dict[str, Any]) -> None:
            nonlocal first
            if first:
                first = False
                TIME_TO_FIRST_CHUNK.labels(*self._labels("chat")).observe(
                    time.perf_counter() - started)
            await on_chunk(chunk)

        return await self._timed("chat", started, self.inner.stream(
            body, timeout_s=timeout_s, on_chunk=timed))

    async def embed(self, body: EmbeddingRequest, *, timeout_s: float) -> ProviderResponse:
        """See `Provider.embed`."""
        return await self._timed("embeddings", time.perf_counter(),
                                 self.inner.embed(body, timeout_s=timeout_s))

    async def _timed(self, operation: str, started: float,
                     call: Awaitable[ProviderResponse]) -> ProviderResponse:
        """`call`'s answer, its duration (and tokens) recorded; a request refused before
        any call (`UnsupportedParameter`) is no provider operation and records nothing."""
        try:
            response = await call
        except UnsupportedParameter:
            raise
        except Exception as exc:
            self._ended(operation, started, exc)
            raise
        self._ended(operation, started, None, response)
        return response

    def _ended(self, operation: str, started: float, exc: BaseException | None,
               response: ProviderResponse | None = None) -> None:
        labels = self._labels(operation)
        # Failures the adapter translated carry a status; a cancel (a stream the client
        # abandoned) or an adapter's bug carries its class name.
        failure = "" if exc is None else error_type(exc)
        OPERATION_DURATION.labels(*labels, failure).observe(time.perf_counter() - started)
        usage = response.completion.usage if response is not None else None
        if usage is None:
            return
        TOKEN_USAGE.labels(*labels, "input").observe(usage.prompt_tokens)
        if operation == "chat":
            TOKEN_USAGE.labels(*labels, "output").observe(usage.completion_tokens)

