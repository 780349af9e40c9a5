"""A deployment answered in-process by the simulator's brain: no network, no cost."""

from __future__ import annotations

import asyncio
import time

from broker.config import DeploymentConfig
from broker.errors import ProviderRetriable
from schemas import ChatCompletion, ChatCompletionRequest, EmbeddingRequest
from simulator.answers import simulate_completion
from simulator.embeddings import simulate_embeddings
from simulator.streaming import stream_chunks
from workers.providers.base import ChunkSink, ProviderResponse


class SimulatedProvider:
    """Deterministic answers with token-accurate usage, after `config.latency_ms`.

    It answers exactly what `sluice mock-provider` would, so a configuration can switch
    between the two without changing results.
    """

    name = "simulated"

    def __init__(
        self, deployment: str, config: DeploymentConfig, *, output_tokens: int = 16
    ) -> None:
        self.deployment = deployment
        self._config = config
        self._output_tokens = output_tokens

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float) -> ProviderResponse:
        """Answer `body` as the simulator would.

        Raises:
            ProviderRetriable: The configured latency is longer than `timeout_s`, as a
                slow real provider would time out.
        """
        started = time.perf_counter()
        await self._wait(timeout_s)
        completion = simulate_completion(
            body, upstream_model=self._config.model, output_tokens=self._output_tokens
        )
        return ProviderResponse(
            completion=completion,
            provider_request_id=completion.id,
            latency_ms=(time.perf_counter() - started) * 1000,
            rate_limit_headers={},
        )

    async def _wait(self, timeout_s: float) -> None:
        """The configured latency, or a timeout when that is longer than `timeout_s`."""
        latency_s = self._config.latency_ms / 1000
        if latency_s > timeout_s:
            await asyncio.sleep(timeout_s)
            raise ProviderRetriable(
                f"simulated deployment '{self.deployment}' timed out after {timeout_s}s",
                deployment=self.deployment,
            )
        if latency_s > 0:
            await asyncio.sleep(latency_s)

    async def stream(
        self, body: ChatCompletionRequest, *, timeout_s: float, on_chunk: ChunkSink
    ) -> ProviderResponse:
        """Answer `body` as the simulator streams it, usage chunk included."""
        response = await self.complete(body, timeout_s=timeout_s)
        assert isinstance(response.completion, ChatCompletion)
        for chunk in stream_chunks(response.completion, include_usage=True):
            await on_chunk(chunk)
        return response

    async def embed(self, body: EmbeddingRequest, *, timeout_s: float) -> ProviderResponse:
        """Embed `body` as the simulator would (deterministic vectors)."""
        started = time.perf_counter()
        await self._wait(timeout_s)
        answer = simulate_embeddings(body, upstream_model=self._config.model)
        return ProviderResponse(completion=answer, provider_request_id=None,
                                latency_ms=(time.perf_counter() - started) * 1000,
                                rate_limit_headers={})
