"""The AsyncAPI document of every topic and message, for Kafka-native clients.

FastStream generates it from subscriber and publisher declarations typed with our pydantic
models; the broker object is only a description here and never connects.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from schemas import InferenceRequest, InferenceResult, Lane, StreamChunk, Topics, UsageEvent

REPLY_TOPIC_NOTE = (
    "Set `reply_to` (body, or header) to your own topic and `correlation_id` to anything you "
    "like; the final InferenceResult is published there with header `correlation_id` and key "
    "`correlation_id` (or the request id). A request with `stream: true` gets each chunk "
    "first, as a StreamChunk with header `kind: chunk` (sequence 0, 1, ...), on the same "
    "partition. Sign each request: header `x-sluice-key-id` (your API key id) and "
    "`x-sluice-signature` (hex HMAC-SHA256 of the value bytes with the key's signing "
    "secret, `sluice keys signing-secret`); `tenant` must be the key's tenant and "
    "`reply_to` under `<prefix>tenant.<tenant>.`. Unproven requests are dead-lettered."
)


async def _described_only(message: InferenceRequest) -> None:
    """Never called: the subscriber exists so the document lists the request topics."""


def asyncapi_document(
    topics: Topics, models: Iterable[str], *, bootstrap: str = "kafka:9092", version: str = "0.1.0"
) -> dict[str, Any]:
    """AsyncAPI 3.0 as JSON-ready data: request topics per model and lane, results, usage."""
    broker = KafkaBroker(bootstrap)
    for model in models:
        for lane in Lane:
            broker.subscriber(
                topics.requests(model, lane),
                title=topics.requests(model, lane),
                description=f"Requests for '{model}' ({lane.value} lane). Key: the request id. "
                + REPLY_TOPIC_NOTE,
            )(_described_only)
    broker.publisher(
        topics.results, schema=InferenceResult, title=topics.results,
        description="Every final result (succeeded, failed, expired, cancelled). Key: request id. "
        "Headers: `tenant`, and `webhook: 1` when the request named a webhook URL.",
    )
    broker.publisher(
        topics.replies("{ingress_id}"), schema=InferenceResult,
        title=topics.replies("{ingress_id}"),
        description="Results for callers waiting on one ingress instance (internal).",
    )
    broker.publisher(
        topics.replies("{ingress_id}"), schema=StreamChunk,
        title=topics.replies("{ingress_id}") + " (chunks)",
        description="Chunks of streamed answers, header `kind: chunk`, before their result.",
    )
    broker.publisher(
        topics.usage, schema=UsageEvent, title=topics.usage,
        description="One event per provider call that consumed tokens. Key: tenant.",
    )
    broker.publisher(
        topics.dead_letter, title=topics.dead_letter,
        description="Messages that cannot be processed, unchanged (original key, value and "
        "headers) plus headers x-sluice-dlq-reason, -topic, -partition, -offset and -at.",
    )
    spec = AsyncAPI(broker, title="sluicegate", version=version, schema_version="3.0.0",
                    description="Topics and messages of a sluicegate deployment.")
    document: dict[str, Any] = spec.to_specification().to_jsonable()
    return document
