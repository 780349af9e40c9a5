"""Pure helpers of the ledger: from Kafka records to table rows and commit positions (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeAlias

from broker.errors import PoisonMessage
from broker.guardrails.screening import MaskedForStorage
from broker.kafka import (
    ConsumerRecord,
    decode,
)
from schemas import (
    FINAL_STATUSES,
    ChatCompletionRequest,
    ChatMessage,
    InferenceRequest,
    InferenceResult,
    RequestStatus,
    Topics,
    UsageEvent,
)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


class Kind(StrEnum):
    """What a record becomes in PostgreSQL; also the order rows are written in."""

    USAGE = "usage"
    REQUEST = "request"
    RESULT = "result"


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """Column values for one table row, with the record it came from (for dead letters).

    `prompt` (request rows) holds the request's messages apart from `values`, so no
    statement writes them by accident: they are stored only for tenants that opted in to
    storing content (`workers.ledger.content`), and turned into JSON only then.
    """

    kind: Kind
    key: str
    values: dict[str, Any]
    record: Record
    prompt: Sequence[ChatMessage] | None = None
    # Request rows: the decoded request, so checking who sent it decodes nothing again.
    request: InferenceRequest | None = None
    # Result rows: the decoded result (the response cache keeps succeeded answers from it).
    result: InferenceResult | None = None


@dataclass(frozen=True, slots=True)
class Poison:
    """A record that can never be recorded, and why."""

    record: Record
    reason: str


@dataclass(slots=True)
class LedgerBatch:
    """One poll's worth of records, decoded, deduplicated and grouped by kind."""

    rows: dict[Kind, list[LedgerRow]] = field(default_factory=lambda: {k: [] for k in Kind})
    poison: list[Poison] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


def subscription_pattern(prefix: str) -> str:
    """The topics the ledger reads: every request topic, results and usage."""
    return "^" + re.escape(prefix) + r"(requests\..+|results|usage)$"


def classify(topics: Topics, topic: str) -> Kind | None:
    """Which kind of row a topic's records become (None: not a ledger topic)."""
    if topic == topics.usage:
        return Kind.USAGE
    if topic == topics.results:
        return Kind.RESULT
    if re.match(topics.requests_pattern, topic):
        return Kind.REQUEST
    return None


def _utc(moment: datetime) -> datetime:
    # A producer that sends a naive time almost certainly means UTC; never the host's zone.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def usage_row(event: UsageEvent) -> dict[str, Any]:
    """`usage_events` values of one usage event."""
    return {
        "event_id": event.event_id,
        "request_id": event.request_id,
        "tenant": event.tenant,
        "api_key_id": event.api_key_id,
        "model": event.model,
        "deployment": event.deployment,
        "provider": event.provider,
        "provider_request_id": event.provider_request_id,
        "attempt": event.attempt,
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "cached_input_tokens": event.cached_input_tokens,
        "cache_write_input_tokens": event.cache_write_input_tokens,
        "cache_write_1h_input_tokens": event.cache_write_1h_input_tokens,
        "service_tier": event.service_tier,
        "reasoning_output_tokens": event.reasoning_output_tokens,
        # Only from a worker of an earlier release; the ledger prices from the catalog.
        "cost_usd": event.cost_usd,
        "price_id": None,
        "latency_ms": event.latency_ms,
        "status": event.status,
        "started_at": _utc(event.started_at),
        "finished_at": _utc(event.finished_at),
        "variant": event.variant,
    }


def request_row(request: InferenceRequest) -> dict[str, Any]:
    """`requests` values of a request just queued."""
    return {
        "id": request.id,
        "tenant": request.tenant,
        "api_key_id": request.api_key_id,
        "model": request.model,
        "lane": request.lane.value,
        "status": RequestStatus.QUEUED.value,
        "result": None,
        "error": None,
        "created_at": _utc(request.created_at),
        "finished_at": None,
        **_routing(request),
        **_template(request),
    }


def _template(request: InferenceRequest) -> dict[str, Any]:
    """The template columns (0018) from the metadata ingress sets on a template call; a
    version that is not a whole number (a Kafka-native producer's) is left out."""
    version = request.metadata.get("template_version", "")
    return {"template": request.metadata.get("template"),
            # ASCII digits only ("²".isdigit() is true, int("²") fails), and a size that
            # fits the column: a producer's odd metadata must never stall the ledger.
            "template_version": (int(version) if version.isascii() and version.isdigit()
                                 and len(version) <= 9 else None)}


def _routing(message: InferenceRequest | InferenceResult) -> dict[str, str | None]:
    """The routing columns (0017), which requests and results both carry: whichever of
    the two the ledger records first inserts the row with them."""
    return {"requested_model": message.requested_model, "variant": message.variant,
            "shadow_of": message.shadow_of}


def prompt_json(messages: Iterable[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as `requests.prompt` holds them (for opted-in tenants only)."""
    return [message.model_dump(mode="json", exclude_none=True) for message in messages]


def result_row(result: InferenceResult) -> dict[str, Any]:
    """`requests` values of a request's final result (its lane is not in the result).

    Raises:
        PoisonMessage: the status is not final.
    """
    if result.status not in FINAL_STATUSES:
        raise PoisonMessage(f"result status {result.status.value!r} is not final")
    return {
        "id": result.request_id,
        "tenant": result.tenant,
        "api_key_id": result.api_key_id,
        "model": result.model,
        "lane": None,
        "status": result.status.value,
        # Without the cache ticket: it says where the answer is cached, nothing about it.
        "result": result.model_dump(mode="json", exclude_none=True, exclude={"cache"}),
        "error": result.error.model_dump(mode="json", exclude_none=True) if result.error else None,
        "created_at": _utc(result.created_at),
        "finished_at": _utc(result.finished_at),
        **_routing(result),
    }


def to_row(kind: Kind, record: Record) -> LedgerRow:
    """Decode and validate one record into its row.

    Raises:
        PoisonMessage: the record cannot be decoded or is invalid.
    """
    if kind is Kind.USAGE:
        event = decode(UsageEvent, record)
        return LedgerRow(kind, event.event_id, usage_row(event), record)
    if kind is Kind.REQUEST:
        request = decode(InferenceRequest, record)
        # An embeddings request's input is not kept as a prompt: it is data, often a corpus.
        prompt: Sequence[ChatMessage] | None = (
            request.body.messages if isinstance(request.body, ChatCompletionRequest) else None)
        if prompt is not None and request.guardrails:  # screened: stored masked (if at all)
            prompt = MaskedForStorage(prompt)
        return LedgerRow(kind, request.id, request_row(request), record, prompt, request)
    result = decode(InferenceResult, record)
    return LedgerRow(kind, result.request_id, result_row(result), record, result=result)


def plan_batch(topics: Topics, records: Iterable[Record]) -> LedgerBatch:
    """Decode a poll's records; the first row per id wins, poison is set aside.

    Keeping the first matters twice: PostgreSQL refuses an `ON CONFLICT DO UPDATE` that
    touches one row twice, and the first final result of a request is the one that counts
    (a request's results share its key, hence a partition, hence arrive in order).
    """
    batch = LedgerBatch()
    seen: set[tuple[Kind, str]] = set()
    for record in records:
        kind = classify(topics, record.topic)
        if kind is None:
            continue
        try:
            row = to_row(kind, record)
        except PoisonMessage as exc:
            # Request topics belong to the worker pool, which dead-letters their poison;
            # parking it here too would list every bad request twice.
            if kind is not Kind.REQUEST:
                batch.poison.append(Poison(record, str(exc)))
            continue
        if (kind, row.key) not in seen:
            seen.add((kind, row.key))
            batch.rows[kind].append(row)
    return batch
