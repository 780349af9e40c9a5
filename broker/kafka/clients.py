"""Kafka clients, topics, codecs and dead letters: the one place that drives aiokafka.

We drive aiokafka directly on the hot paths instead of FastStream's subscribers, because of
three verified pitfalls (DESIGN.md): `ack()` commits every assigned partition's position
(unsafe with concurrent processing), `nack()` redelivers at once with no backoff, and
`request()` does not work on real Kafka. The pieces here make those paths explicit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnsupportedVersionError,
    for_code,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from pydantic import BaseModel, ValidationError

from broker.errors import BrokerUnavailable, PoisonMessage
from broker.kafka.memory import MemoryConsumer, MemoryProducer, is_memory, memory_broker
from broker.kafka.security import client_security, describe, login_refused
from broker.kafka.topic_configs import align_topic_configs
from broker.settings import KafkaSettings
from broker.telemetry.tracing import kafka_trace_headers
from schemas import Topics

log = logging.getLogger("sluice.kafka")

# Apache Kafka's default `message.max.bytes`, for brokers that do not say theirs.
DEFAULT_MESSAGE_MAX_BYTES = 1_048_588
# Kafka's own default `default.replication.factor`, likewise.
DEFAULT_REPLICATION_FACTOR = 1
_UNKNOWN_TOPIC = 3  # Kafka's error code UNKNOWN_TOPIC_OR_PARTITION
# On a cluster of at least this many brokers, fewer replicas than this is a warning.
DURABLE_REPLICAS = 3

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


def message_limit(settings: KafkaSettings) -> int:
    """The largest record the brokers accept, as configured or as Kafka's default."""
    return settings.max_message_bytes or DEFAULT_MESSAGE_MAX_BYTES


def new_producer(
    settings: KafkaSettings, *, client_id: str, linger_ms: int = 0
) -> AIOKafkaProducer:
    """A producer that answers only after every in-sync replica has the message.

    Idempotent wherever the broker supports it, so a retried produce request never writes
    a record twice (the embedded Tansu broker has no InitProducerId; there, ids in the
    messages make a duplicate harmless). Records over the brokers' `message.max.bytes` are
    refused here, before they are sent (`is_too_large`).
    """
    if is_memory(settings.kafka_bootstrap):
        return MemoryProducer(settings.kafka_bootstrap,
                              max_request_size=message_limit(settings))
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.kafka_engine != "tansu",
        linger_ms=linger_ms,
        request_timeout_ms=int(settings.publish_timeout_s * 1000),
        max_batch_size=256 * 1024,
        max_request_size=message_limit(settings),
        **client_security(settings),
    )


def fits(settings: KafkaSettings, key: bytes, value: bytes, headers: Headers = ()) -> bool:
    """Whether a record can be produced under the brokers' size limit (batch overhead too)."""
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
    return int(size) <= message_limit(settings)


def is_too_large(exc: BaseException) -> bool:
    """Whether a produce failed because the record is over the brokers' size limit.

    Such a failure is final: sending the same record again can never succeed.
    """
    return isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError
                      | RecordListTooLargeError)


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
        "fetch_min_bytes": settings.background_fetch_min_bytes if background else 1,
        "max_poll_interval_ms": 300_000,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
    }
    options.update(overrides)
    if is_memory(settings.kafka_bootstrap):
        return MemoryConsumer(**options)
    return AIOKafkaConsumer(**options, **client_security(settings))


@dataclass(frozen=True)
class BrokerFacts:
    """What the brokers say about themselves, read once at start."""

    brokers: int
    replication_factor: int
    message_max_bytes: int


async def _admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                request_timeout_ms=int(settings.publish_timeout_s * 1000),
                                **client_security(settings))
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()  # a half-started client still holds a connection
        # Name the SASL user and the brokers' reason: a refused login otherwise reads
        # like a broker that is down.
        refused = await login_refused(settings)
        if refused is not None:
            raise BrokerUnavailable(
                f"Kafka at {describe(settings)} refused the login: {refused}. Check "
                "SLUICE_KAFKA_SASL_USERNAME and SLUICE_KAFKA_SASL_PASSWORD") from exc
        raise BrokerUnavailable(f"cannot reach Kafka at {describe(settings)}: {exc}") from exc
    return admin


async def _broker_facts(admin: AIOKafkaAdminClient) -> BrokerFacts:
    cluster = await admin.describe_cluster()
    brokers = cluster["brokers"]
    wanted = {"default.replication.factor": str(DEFAULT_REPLICATION_FACTOR),
              "message.max.bytes": str(DEFAULT_MESSAGE_MAX_BYTES)}
    found: dict[str, str] = {}
    if brokers:
        # Every config, not just ours: Tansu answers a request naming keys with a
        # response aiokafka cannot decode.
        resource = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["node_id"]))
        try:
            responses = await admin.describe_configs([resource])
        except KafkaError as exc:  # a broker without DescribeConfigs keeps Kafka's defaults
            log.info("brokers did not describe their configs (%s); assuming defaults", exc)
            responses = []
        for response in responses:
            for entry in response.resources:
                for name, value, *_ in entry[4]:
                    if name in wanted and value is not None:
                        found[name] = value
    values = {**wanted, **found}
    return BrokerFacts(brokers=len(brokers),
                       replication_factor=int(values["default.replication.factor"]),
                       message_max_bytes=int(values["message.max.bytes"]))


async def describe_brokers(settings: KafkaSettings) -> BrokerFacts:
    """How many brokers there are, and their default replication and message size limit."""
    if is_memory(settings.kafka_bootstrap):
        return BrokerFacts(1, DEFAULT_REPLICATION_FACTOR, DEFAULT_MESSAGE_MAX_BYTES)
    admin = await _admin(settings)
    try:
        return await _broker_facts(admin)
    finally:
        await admin.close()


async def with_broker_limits(settings: KafkaSettings) -> KafkaSettings:
    """`settings` with `max_message_bytes` read from the brokers when it is not set.

    Composition roots call this once at start. If Kafka cannot be reached yet, Kafka's
    default limit is assumed (and logged): a process must start while Kafka is away.
    """
    if settings.max_message_bytes is not None:
        return settings
    try:
        facts = await describe_brokers(settings)
    except (BrokerUnavailable, KafkaError) as exc:
        log.warning("could not ask Kafka for message.max.bytes (%s); assuming %d bytes",
                    exc, DEFAULT_MESSAGE_MAX_BYTES)
        return settings.model_copy(update={"max_message_bytes": DEFAULT_MESSAGE_MAX_BYTES})
    return settings.model_copy(update={"max_message_bytes": facts.message_max_bytes})


async def ensure_topics(
    settings: KafkaSettings,
    names: Iterable[str],
    *,
    partitions: int | None = None,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create topics that do not exist yet (idempotent; racing creators are fine).

    They get `partitions` partitions, or `settings.topic_partitions` when not given, and
    `settings.topic_replication_factor` replicas, or the brokers' default. On a cluster of
    three brokers or more, a topic with fewer than three replicas is logged as a warning:
    losing one broker would lose what only it holds.

    `configs` (topic configs such as `retention.ms`) are set on created topics, and on
    existing ones that say otherwise (logged). Failing to change an existing topic is
    logged, not raised: a process must start even where it may not alter configs. The
    in-memory broker keeps no configs.
    """
    wanted = sorted(set(names))
    if not wanted:
        return
    if is_memory(settings.kafka_bootstrap):
        for name in wanted:
            memory_broker(settings.kafka_bootstrap).create_topic(
                name, partitions or settings.topic_partitions)
        return
    topic_configs = {
        **({} if settings.topic_min_insync_replicas is None else
           {"min.insync.replicas": str(settings.topic_min_insync_replicas)}),
        **(configs or {}),
    }
    admin = await _admin(settings)
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        facts = await _broker_facts(admin)
        if missing:
            replicas = settings.topic_replication_factor or facts.replication_factor
            response = await admin.create_topics([
                NewTopic(name, num_partitions=partitions or settings.topic_partitions,
                         replication_factor=replicas, topic_configs=topic_configs)
                for name in missing
            ])
            _raise_create_errors(response)
        if configs:
            # Only the configs asked for here: a topic's min.insync.replicas is the
            # operator's once it exists.
            for name in wanted:
                if name in existing:
                    await align_topic_configs(admin, name, dict(configs))
        if facts.brokers >= DURABLE_REPLICAS:
            await _warn_if_fragile(admin, wanted, facts.brokers)
    finally:
        await admin.close()


def _raise_create_errors(response: Any) -> None:
    for topic, code, *rest in response.topic_errors:
        if code == 0 or for_code(code) is TopicAlreadyExistsError:
            continue
        message = rest[0] if rest else None
        raise BrokerUnavailable(
            f"Kafka refused to create topic {topic}: {for_code(code).__name__}"
            + (f" ({message})" if message else ""))


async def _warn_if_fragile(admin: AIOKafkaAdminClient, names: list[str], brokers: int,
                           *, timeout_s: float = 10.0) -> None:
    # A topic created a moment ago may not be in every broker's metadata yet (it is then
    # described with no partitions): ask again until each is, or the warning is lost.
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        if all(topic.get("partitions") for topic in described) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    for topic in described:
        counts = [len(p["replicas"]) for p in topic.get("partitions", [])]
        if counts and min(counts) < DURABLE_REPLICAS:
            log.warning(
                "topic %s has %d replica(s) on a cluster of %d brokers: losing one broker "
                "can lose accepted messages. Set SLUICE_TOPIC_REPLICATION_FACTOR=3 (or the "
                "brokers' default.replication.factor) and raise it with "
                "kafka-reassign-partitions", topic["topic"], min(counts), brokers)


async def partition_ids(
    settings: KafkaSettings, topic: str, *, missing_ok: bool = False, timeout_s: float = 15.0
) -> list[int]:
    """A topic's partition ids, once every partition has a leader.

    A consumer's own metadata knows only the topics it subscribed to, and a topic created
    a moment ago may still be electing leaders: ask the cluster, and wait for them. With
    `missing_ok`, a topic that does not exist has no partitions.
    """
    if is_memory(settings.kafka_bootstrap):
        topics = memory_broker(settings.kafka_bootstrap).topics
        if topic not in topics and missing_ok:
            return []
        if topic not in topics:
            raise BrokerUnavailable(f"topic {topic} does not exist")
        return list(range(len(topics[topic])))
    admin = await _admin(settings)
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            described = await admin.describe_topics([topic])
            partitions = described[0].get("partitions", []) if described else []
            if missing_ok and described and described[0]["error_code"] == _UNKNOWN_TOPIC:
                return []
            if (described and described[0]["error_code"] == 0 and partitions
                    and all(p["leader"] >= 0 for p in partitions)):
                return sorted(p["partition"] for p in partitions)
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerUnavailable(f"topic {topic} has no leader for every partition "
                                        f"after {timeout_s:.0f}s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def delete_topics(settings: KafkaSettings, names: Iterable[str]) -> None:
    """Delete topics (those that do not exist are ignored)."""
    if is_memory(settings.kafka_bootstrap):
        for name in names:
            memory_broker(settings.kafka_bootstrap).delete_topic(name)
        return
    admin = await _admin(settings)
    try:
        await admin.delete_topics(list(names))
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
    """The headers a worker puts on a result it publishes to `<prefix>results`.

    With the current span's `traceparent`: the ledger and the deliverer continue the
    request's trace from it.
    """
    headers = [(RESULT_TENANT_HEADER, tenant.encode())]
    if has_webhook:
        headers.append((RESULT_WEBHOOK_HEADER, b"1"))
    headers.extend(kafka_trace_headers())
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


async def start_at_time(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], since_ms: int
) -> bool:
    """Make `consumer` read `partitions` from their first record at or after `since_ms`.

    A partition whose every record is older starts at its end. Returns False, moving
    nothing, where the brokers cannot look offsets up by time (ListOffsets before v1):
    the consumer then reads from wherever its offset reset puts it. Tansu answers a lookup
    of any past time with its partition's first offset, so there the whole partition is read:
    callers that must not see older records filter by timestamp too.
    """
    if not partitions:
        return True
    # The ends first: a record written after the lookup found none is then still read.
    ends = await consumer.end_offsets(list(partitions))
    try:
        found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
    except (IncompatibleBrokerVersion, UnsupportedVersionError):
        return False
    for tp in partitions:
        position = found.get(tp)
        # "No such record" is None on Apache Kafka, timestamp -1 on some compatibles.
        if position is None or position.timestamp < 0:
            consumer.seek(tp, ends[tp])
        else:
            consumer.seek(tp, position.offset)
    return True


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
