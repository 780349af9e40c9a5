"""What this worker observed of each deployment: calls in flight and an EWMA of latency.

The `least_busy` and `lowest_latency` strategies (`workers.inference.router`) read them.
They are this worker's view, not the fleet's: every worker steers its own calls away from
a deployment that is slow or crowded for it, which spreads load without a shared store (the
shared rate budgets still hold globally). `tracked(providers, stats)` wraps each adapter
once, where the processor is built, so every call is counted however it ends.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from schemas import ChatCompletionRequest, EmbeddingRequest
from workers.providers import Provider, ProviderResponse
from workers.providers.base import ChunkSink

T = TypeVar("T")

LATENCY_EWMA_ALPHA = 0.2
"""Weight of the newest call in the latency average: about the last ten calls count."""


class DeploymentStats:
    """Calls in flight and smoothed latency per deployment (this process only)."""

    def __init__(self, alpha: float = LATENCY_EWMA_ALPHA) -> None:
        self._alpha = alpha
        self.in_flight: Counter[str] = Counter()
        self._latency_ms: dict[str, float] = {}

    def started(self, deployment: str) -> None:
        """A call to `deployment` began."""
        self.in_flight[deployment] += 1

    def finished(self, deployment: str, latency_ms: float | None) -> None:
        """It ended; `latency_ms` None: it failed (no latency worth learning from).

        A failed call teaches nothing about speed (a refusal is fast, a timeout slow); the
        circuit breakers and failover deal with failures.
        """
        self.in_flight[deployment] = max(0, self.in_flight[deployment] - 1)
        if latency_ms is not None:
            self.observe_latency(deployment, latency_ms)

    def observe_latency(self, deployment: str, latency_ms: float) -> None:
        """Fold one measured call into the deployment's average."""
        previous = self._latency_ms.get(deployment)
        self._latency_ms[deployment] = latency_ms if previous is None else (
            previous + self._alpha * (latency_ms - previous))

    def latency_ms(self, deployment: str) -> float | None:
        """The smoothed latency; None before the first successful call."""
        return self._latency_ms.get(deployment)


def tracked(providers: Mapping[str, Provider], stats: DeploymentStats) -> dict[str, Provider]:
    """Each provider wrapped so `stats` sees its calls."""
    return {name: TrackedProvider(provider, stats) for name, provider in providers.items()}


class TrackedProvider:
    """A `Provider` that counts its calls in flight and times the successful ones."""

    def __init__(self, inner: Provider, stats: DeploymentStats) -> None:
        self.inner = inner
        self.name = inner.name
        self.deployment = inner.deployment
        self._stats = stats

    async def _counted(self, call: Callable[[], Awaitable[T]]) -> T:
        self._stats.started(self.deployment)
        started = time.perf_counter()
        latency_ms: float | None = None
        try:
            result = await call()
            latency_ms = (time.perf_counter() - started) * 1000
            return result
        finally:  # a failure (or a refusal before any call) teaches nothing of speed
            self._stats.finished(self.deployment, latency_ms)

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float,
                       ) -> ProviderResponse:
        """See `Provider.complete`."""
        return await self._counted(lambda: self.inner.complete(body, timeout_s=timeout_s))

    async def stream(self, body: ChatCompletionRequest, *, timeout_s: float,
                     on_chunk: ChunkSink) -> ProviderResponse:
        """See `Provider.stream`."""
        return await self._counted(
            lambda: self.inner.stream(body, timeout_s=timeout_s, on_chunk=on_chunk))

    async def embed(self, body: EmbeddingRequest, *, timeout_s: float) -> ProviderResponse:
        """See `Provider.embed`."""
        return await self._counted(lambda: self.inner.embed(body, timeout_s=timeout_s))
