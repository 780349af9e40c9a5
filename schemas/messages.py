"""Messages that cross Kafka: commands (`InferenceRequest`) and events (result, usage).

Every message carries a stable id and `schema_version`; consumers use the id to make every
effect idempotent (Kafka delivers at least once). Models are frozen and forbid unknown
fields: a producer that sends something else finds out from the dead-letter topic, not from
a silently dropped field.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.caching import CacheTicket
from schemas.chat import ChatCompletion, ChatCompletionRequest
from schemas.embeddings import EmbeddingRequest, EmbeddingResponse
from schemas.guardrails import GuardrailDecision

SCHEMA_VERSION: Literal[1] = 1


class Lane(StrEnum):
    """Which queue a request waits in; interactive is always served first."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class RequestStatus(StrEnum):
    """Life cycle of a request; the last four are final."""

    QUEUED = "queued"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {RequestStatus.SUCCEEDED, RequestStatus.FAILED, RequestStatus.EXPIRED, RequestStatus.CANCELLED}
)


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION


class InferenceRequest(_Message):
    """Command: answer this chat request. Key on Kafka: `id`.

    `reply_to` and `correlation_id` are canonical here in the body; ingress mirrors them
    into headers so routers can read them without parsing JSON.
    """

    id: Annotated[str, Field(min_length=1, max_length=200)]
    model: Annotated[str, Field(min_length=1)]
    # A chat request has `messages`, an embeddings request `input`: never both, so the
    # union always knows which one it holds.
    body: ChatCompletionRequest | EmbeddingRequest
    tenant: str = "default"
    api_key_id: str | None = None
    lane: Lane = Lane.INTERACTIVE
    created_at: datetime
    deadline: datetime | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    attempt: Annotated[int, Field(ge=0)] = 0
    metadata: dict[str, str] = Field(default_factory=dict)
    # Where `sluice deliver` POSTs the signed result (Standard Webhooks); checked at ingress.
    webhook_url: Annotated[str, Field(max_length=2048)] | None = None
    # Response cache (README "Caching"): where the ledger keeps the answer; set by ingress.
    cache: CacheTicket | None = None
    # Routing (README "Routing"): the alias the caller asked for (`model` is the model it
    # resolved to), the A/B or canary variant ingress assigned (workers assign one when
    # absent), and on a shadow copy the id of the request it mirrors.
    requested_model: str | None = None
    variant: Annotated[str, Field(max_length=100)] | None = None
    shadow_of: Annotated[str, Field(max_length=200)] | None = None
    # Guardrails (README "Guardrails"): the policies of the model and then of the caller's
    # API key, set by ingress. Workers apply the model's own policies in any case (a
    # Kafka-native producer cannot drop them), then these.
    guardrails: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None


class ErrorInfo(BaseModel):
    """Why a request did not succeed, in OpenAI's error vocabulary."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    code: str | None = None
    message: str
    param: str | None = None
    """The request parameter at fault, when one is (OpenAI's `error.param`)."""


class InferenceResult(_Message):
    """Event: a request reached its final answer. Key on Kafka: `request_id`."""

    request_id: str
    model: str
    status: RequestStatus
    completion: ChatCompletion | EmbeddingResponse | None = None
    error: ErrorInfo | None = None
    tenant: str = "default"
    api_key_id: str | None = None
    deployment: str | None = None
    provider: str | None = None
    attempts: Annotated[int, Field(ge=0)] = 0
    correlation_id: str | None = None
    created_at: datetime
    finished_at: datetime
    # Copied from the request, so the deliverer needs nothing but this event.
    webhook_url: str | None = None
    # Copied from a succeeded request's (README "Caching"): the ledger keeps the answer.
    cache: CacheTicket | None = None
    # Copied from the request (routing, README "Routing"), so the ledger's row has them
    # whichever of the two it records first.
    requested_model: str | None = None
    variant: str | None = None
    shadow_of: str | None = None
    # What guardrail policies did (README "Guardrails"); the ledger records each decision
    # in `guardrail_events`. Names the policy, rule and action, never the matched text.
    guardrails: list[GuardrailDecision] | None = None


class StreamChunk(_Message):
    """Event: one chunk of a streamed answer. Key on Kafka: the correlation id."""

    request_id: Annotated[str, Field(min_length=1)]
    correlation_id: str | None = None
    sequence: Annotated[int, Field(ge=0)]
    """0, 1, 2, ... per request: a reader can put chunks back in order."""
    chunk: dict[str, Any]
    """The provider's `chat.completion.chunk`, as sent."""


class CancelRequested(_Message):
    """Event: a client asked to cancel a request. Key on Kafka: `request_id`.

    Workers answer a request not yet started `cancelled`; one already started finishes.
    """

    request_id: Annotated[str, Field(min_length=1, max_length=200)]
    tenant: str
    requested_at: datetime


class UsageEvent(_Message):
    """Event: one provider call consumed tokens. Key on Kafka: `tenant`.

    `event_id` is assigned once per provider call, so a redelivered event never becomes a
    second ledger row while a second (billed) call always does.
    """

    event_id: str
    request_id: str
    tenant: str
    api_key_id: str | None = None
    model: str
    deployment: str
    provider: str
    provider_request_id: str | None = None
    input_tokens: Annotated[int, Field(ge=0)]
    output_tokens: Annotated[int, Field(ge=0)]
    # Of `input_tokens` (OpenAI's convention: cache hits are counted in the prompt), how many
    # the provider served from its prompt cache; the ledger charges them the cached price.
    cached_input_tokens: Annotated[int, Field(ge=0)] = 0
    # Of `output_tokens` (OpenAI's convention), how many a reasoning model spent thinking;
    # they are billed at the output price.
    reasoning_output_tokens: Annotated[int, Field(ge=0)] = 0
    # Of `input_tokens`, how many were written to the provider's prompt cache (Anthropic's
    # `cache_creation_input_tokens`); the ledger charges them the cache-write price.
    cache_write_input_tokens: Annotated[int, Field(ge=0)] = 0
    # Of those, how many went to Anthropic's one-hour cache (its own, higher price).
    cache_write_1h_input_tokens: Annotated[int, Field(ge=0)] = 0
    # `batch`: the call went through the provider's own batch API (the native batch lane)
    # and is charged the provider's batch price.
    service_tier: Literal["standard", "batch"] = "standard"
    cost_usd: Decimal | None = None
    latency_ms: Annotated[float, Field(ge=0)]
    status: Literal["succeeded", "failed"]
    attempt: Annotated[int, Field(ge=0)] = 0
    started_at: datetime
    finished_at: datetime
    # The routing variant of the request (A/B name, `canary`, `stable`, `shadow`).
    variant: str | None = None

    @model_validator(mode="after")
    def _cached_within_input(self) -> UsageEvent:
        # More cached than input tokens would bill the uncached rest negative.
        if self.cached_input_tokens + self.cache_write_input_tokens > self.input_tokens:
            raise ValueError("cached_input_tokens + cache_write_input_tokens must not exceed "
                             "input_tokens")
        if self.cache_write_1h_input_tokens > self.cache_write_input_tokens:
            raise ValueError("cache_write_1h_input_tokens must not exceed "
                             "cache_write_input_tokens")
        if self.reasoning_output_tokens > self.output_tokens:
            raise ValueError("reasoning_output_tokens must not exceed output_tokens")
        return self
