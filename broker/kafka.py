"""Kafka plumbing shared by every process: clients, topics, codecs and dead letters.

We drive aiokafka directly on the hot paths instead of FastStream's subscribers, because of
three verified pitfalls (DESIGN.md): `ack()` commits every assigned partition's position
(unsafe with concurrent processing), `nack()` redelivers at once with no backoff, and
`request()` does not work on real Kafka. The pieces here make those paths explicit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import BaseModel, ValidationError

from broker.errors import BrokerUnavailable, PoisonMessage
from broker.settings import KafkaSettings
from schemas import Topics

ModelT = TypeVar("ModelT", bound=BaseModel)

Headers = Sequence[tuple[str, bytes]]

DLQ_REASON = "x-sluice-dlq-reason"
DLQ_TOPIC = "x-sluice-dlq-topic"
DLQ_PARTITION = "x-sluice-dlq-partition"
DLQ_OFFSET = "x-sluice-dlq-offset"
DLQ_AT = "x-sluice-dlq-at"


def topics_for(settings: KafkaSettings) -> Topics:
    """Topic names under the configured prefix."""
    return Topics(settings.topic_prefix)


def new_producer(
    settings: KafkaSettings, *, client_id: str, linger_ms: int = 0
) -> AIOKafkaProducer:
    """A producer that answers only after every in-sync replica has the message."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        acks="all",
        # The development broker has no idempotent producer; duplicates are handled by ids.
        enable_idempotence=False,
        linger_ms=linger_ms,
        request_timeout_ms=int(settings.publish_timeout_s * 1000),
        max_batch_size=256 * 1024,
    )


def new_consumer(
    settings: KafkaSettings,
    *,
    client_id: str,
    group_id: str | None,
    background: bool = False,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: callers commit after their effect is durable.

    `background` consumers (nobody waits on them) use the longer fetch wait.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": (
            settings.background_fetch_max_wait_ms if background else settings.fetch_max_wait_ms
        ),
        "max_poll_interval_ms": 300_000,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
    }
    options.update(overrides)
    return AIOKafkaConsumer(**options)


async def ensure_topics(
    settings: KafkaSettings, names: Iterable[str], *, partitions: int | None = None
) -> None:
    """Create topics that do not exist yet (idempotent; racing creators are fine).

    They get `partitions` partitions, or `settings.topic_partitions` when not given.
    """
    wanted = sorted(set(names))
    if not wanted:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()  # a half-started client still holds a connection
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}") from exc
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions or settings.topic_partitions,
                     replication_factor=1)
            for name in wanted
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


def encode(message: BaseModel) -> bytes:
    """JSON bytes of a contract message."""
    return message.model_dump_json(exclude_none=True).encode()


def decode(model: type[ModelT], record: ConsumerRecord[bytes, bytes]) -> ModelT:
    """Parse a record's value, or raise `PoisonMessage` saying exactly why it cannot be."""
    if record.value is None:
        raise PoisonMessage("empty message value")
    try:
        return model.model_validate_json(record.value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise PoisonMessage(
            f"not a valid {model.__name__}: {where}: {first['msg']} ({exc.error_count()} errors)"
        ) from exc


# Labels on every message of `<prefix>results`, so readers that care about few results
# (the webhook deliverer) can skip the rest without parsing them.
RESULT_TENANT_HEADER = "tenant"
RESULT_WEBHOOK_HEADER = "webhook"


def result_headers(tenant: str, has_webhook: bool) -> list[tuple[str, bytes]]:
    """The headers a worker puts on a result it publishes to `<prefix>results`."""
    headers = [(RESULT_TENANT_HEADER, tenant.encode())]
    if has_webhook:
        headers.append((RESULT_WEBHOOK_HEADER, b"1"))
    return headers


def header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    """The first header called `name`, decoded, or None."""
    for key, value in record.headers or ():
        if key == name and value is not None:
            return bytes(value).decode(errors="replace")
    return None


async def send_to_dead_letter(
    producer: AIOKafkaProducer,
    topics: Topics,
    record: ConsumerRecord[bytes, bytes],
    reason: str,
) -> None:
    """Park a message that cannot be processed, with where it came from and why.

    The original bytes, key and headers are kept so `sluice dead-letters replay` can send
    it back unchanged once the cause is fixed.
    """
    headers = [
        *(record.headers or ()),
        (DLQ_REASON, reason.encode()),
        (DLQ_TOPIC, record.topic.encode()),
        (DLQ_PARTITION, str(record.partition).encode()),
        (DLQ_OFFSET, str(record.offset).encode()),
        (DLQ_AT, datetime.now(UTC).isoformat().encode()),
    ]
    await producer.send_and_wait(
        topics.dead_letter, value=record.value, key=record.key, headers=headers
    )


async def wait_all(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Await several produce futures, raising the first failure."""
    await asyncio.gather(*futures)


async def read_present(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of `partitions` from the consumer's positions to their ends as of now.

    The ends come from `end_offsets`, raised to the high watermark of each partition's
    first fetch: Tansu answers ListOffsets(latest) with the first offset of a partition's
    last record batch plus one, not its last record's, so reading only to `end_offsets`
    missed up to a batch per partition there (Apache Kafka's answers already agree).
    """
    ends = await consumer.end_offsets(list(partitions))
    unseen = {tp: 3 for tp in partitions}  # fetches left to learn a partition's watermark
    remaining = {tp for tp in partitions if ends[tp] > 0}
    while remaining:
        fetched = await consumer.getmany(*remaining, timeout_ms=500)
        for tp in list(unseen):
            highwater = consumer.highwater(tp)
            unseen[tp] -= 1
            if highwater is not None:
                ends[tp] = max(ends[tp], highwater)
            if highwater is not None or unseen[tp] <= 0:
                del unseen[tp]
        for tp, records in fetched.items():
            for record in records:
                if record.offset < ends[tp]:
                    yield record
        remaining = {tp for tp in remaining
                     if tp in unseen or await consumer.position(tp) < ends[tp]}
