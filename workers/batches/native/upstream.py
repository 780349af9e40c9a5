"""What the native lane needs of a provider's batch API, whichever provider it is.

`BatchUpstream` is implemented once per batch API (`openai_batches`, `anthropic_batches`);
the lane (`workers.batches.native.lane`) only sees these types. Every method translates
failures into `ProviderRetriable` (try again next tick) or `ProviderRejected` (the provider
refused this call for good), as provider adapters do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorInfo,
    RequestStatus,
)

UPSTREAM_TIMEOUT_S = 600.0
"""Longest one call to a batch API may take: creating a batch uploads up to 200 MB
(OpenAI) or 256 MB (Anthropic) in one call, and a result file can be as large."""


Outcome = Literal["completed", "expired", "cancelled", "failed"]
"""How an upstream batch ended, in one vocabulary for both providers."""


@dataclass(frozen=True, slots=True)
class UpstreamBatch:
    """An upstream batch as last seen.

    Attributes:
        id: The provider's batch id.
        status: The provider's own word (`in_progress`, `finalizing`, `ended`, ...).
        outcome: How it ended; None while it runs.
        error: Why it failed as a whole (OpenAI's validation errors), if it did.
        output_file_id: OpenAI's output file (None for Anthropic, or none yet).
        error_file_id: OpenAI's error file.
    """

    id: str
    status: str
    outcome: Outcome | None = None
    error: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """One line's answer in an upstream batch's results.

    `custom_id` is the line's request id (the lane sends request ids as custom ids).
    """

    custom_id: str
    status: RequestStatus
    completion: ChatCompletion | EmbeddingResponse | None = None
    error: ErrorInfo | None = None
    provider_request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkToSend:
    """What `BatchUpstream.submit` sends.

    Attributes:
        id: Our chunk id (OpenAI batch metadata carries it, so a lost answer can be found).
        endpoint: The batch's endpoint (`/v1/chat/completions` or `/v1/embeddings`).
        lines: The encoded lines (`BatchUpstream.encode_line`), in line order.
        upstream_file_id: An input file uploaded by an earlier attempt, to reuse.
    """

    id: str
    endpoint: str
    lines: list[bytes]
    upstream_file_id: str | None = None


class BatchUpstream(Protocol):
    """One deployment's batch API."""

    provider: str
    """The provider kind, as usage events name it (`openai`, `anthropic`)."""
    deployment: str
    max_lines: int
    """The provider's limit of lines (requests) per batch."""
    max_bytes: int
    """The provider's limit of bytes per batch (file or request body)."""

    def encode_line(self, request_id: str, body: ChatCompletionRequest | EmbeddingRequest,
                    endpoint: str) -> bytes:
        """The line as the provider's batch API takes it (JSON, no newline).

        Raises:
            UnsupportedParameter: The provider cannot express part of `body`.
        """
        ...

    async def submit(self, chunk: ChunkToSend,
                     on_file: AsyncCallback) -> str:
        """Create the upstream batch; its id. `on_file` is awaited with an uploaded input
        file's id before the batch is created (so a retry reuses the file)."""
        ...

    async def find(self, chunk_id: str, lines: int, since: datetime) -> list[str]:
        """Upstream batches created since `since` that may be this chunk's (exactly one
        for OpenAI, whose metadata names the chunk; for Anthropic, every one of the same
        size)."""
        ...

    async def get(self, batch_id: str) -> UpstreamBatch:
        """The upstream batch now."""
        ...

    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to stop the batch (lines not yet run end cancelled)."""
        ...

    def answers(self, batch: UpstreamBatch) -> AsyncIterator[UpstreamAnswer]:
        """Every line's answer of an ended batch, in the provider's order."""
        ...


class AsyncCallback(Protocol):
    """An awaitable taking one string (`BatchUpstream.submit`'s `on_file`)."""

    async def __call__(self, value: str, /) -> None: ...
