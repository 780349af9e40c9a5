"""The one interface every provider adapter implements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from broker.errors import ProviderRejected
from schemas import ChatCompletion, ChatCompletionRequest, EmbeddingRequest, EmbeddingResponse

T = TypeVar("T")

ChunkSink = Callable[[dict[str, Any]], Awaitable[None]]
"""Where a streaming call hands each `chat.completion.chunk` the moment it arrives."""


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    """A successful provider call.

    Attributes:
        completion: The provider's answer, with its reported usage.
        provider_request_id: The provider's id of the call (for support tickets), if any.
        latency_ms: Wall time of the call as the worker saw it.
        rate_limit_headers: The provider's rate limit headers (`x-ratelimit-*`,
            `retry-after`, `anthropic-ratelimit-*`), lower-cased, for budget tuning.
    """

    completion: ChatCompletion | EmbeddingResponse
    provider_request_id: str | None
    latency_ms: float
    rate_limit_headers: Mapping[str, str]


class Provider(Protocol):
    """One deployment of a model, callable for chat completions.

    Implementations translate every failure into `ProviderRetriable` or `ProviderRejected`
    (from `broker.errors`) and never retry or fail over themselves: the worker decides.
    """

    name: str
    """The provider kind, e.g. `openai` or `simulated`."""
    deployment: str
    """The deployment's name in the configuration."""

    async def complete(
        self, body: ChatCompletionRequest, *, timeout_s: float
    ) -> ProviderResponse:  # pragma: no cover - protocol
        """Answer `body` with the deployment's upstream model within `timeout_s` seconds.

        Raises:
            ProviderRetriable: Trying again later or elsewhere may succeed.
            ProviderRejected: The provider refused the request itself.
        """
        ...

    async def stream(
        self, body: ChatCompletionRequest, *, timeout_s: float, on_chunk: ChunkSink
    ) -> ProviderResponse:  # pragma: no cover - protocol
        """Answer `body` as a stream: each chunk goes to `on_chunk` as it arrives, and the
        response holds the assembled completion (with the provider's usage, which is always
        asked for). `timeout_s` bounds the wait for each chunk, not the whole answer.

        Raises:
            ProviderRetriable: As `complete`, also after chunks were handed on (a broken
                stream); the caller knows whether it handed any on.
            ProviderRejected: As `complete` (only before the first chunk).
            Whatever `on_chunk` raises, after closing the provider's stream.
        """
        ...

    async def embed(
        self, body: EmbeddingRequest, *, timeout_s: float
    ) -> ProviderResponse:  # pragma: no cover - protocol
        """Embed `body`'s input with the deployment's upstream model.

        Raises:
            ProviderRetriable: As `complete`.
            ProviderRejected: As `complete`.
        """
        ...


def translated(translate: Callable[[], T], deployment: str) -> T:
    """`translate()`, a request's translation into a provider's form.

    sluicegate passes parameters it does not read through unchecked, so a translation can
    meet a value of the wrong shape (`"stop": 5`); that is the caller's mistake, a 400
    naming it, never a worker crash.

    Raises:
        ProviderRejected: A parameter's value could not be read (status 400).
        UnsupportedParameter: As `translate` raises it.
    """
    try:
        return translate()
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise ProviderRejected(
            f"deployment '{deployment}' cannot read the request: a parameter has a value of "
            f"the wrong shape ({type(exc).__name__}: {exc})",
            status_code=400, deployment=deployment) from exc
