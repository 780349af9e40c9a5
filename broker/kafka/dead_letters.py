"""The dead-letter topic's read and replay side, shared by `sluice dead-letters` and the
console (`/console/api/dead-letters`).

An entry keeps the original value, key and headers, plus `x-sluice-dlq-*` headers saying
why and where from (`send_to_dead_letter`). Replay sends the original bytes, key and
headers (without the dead-letter ones) back to the original topic. It is for messages
whose cause was fixed (a model added to the config, a producer corrected). An entry of a
request that exhausted its retries already has a final `failed` result, and the worker
does not run a request with a final result again, so replaying one changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from broker.errors import InvalidRequest, NotFound
from broker.kafka.clients import (
    DLQ_AT,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    ensure_topics,
    new_consumer,
    new_producer,
    partition_ids,
    read_present,
    topics_for,
)
from broker.settings import KafkaSettings

_DLQ_HEADERS = frozenset({DLQ_REASON, DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET, DLQ_AT})


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter topic."""

    partition: int
    offset: int
    reason: str
    topic: str
    source_partition: int | None
    source_offset: int | None
    at: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def id(self) -> str:
        """`partition:offset` in the dead-letter topic, as `replay --id` takes it."""
        return f"{self.partition}:{self.offset}"

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the message had before it was dead-lettered."""
        return [(key, value) for key, value in self.headers if key not in _DLQ_HEADERS]

    def summary(self) -> dict[str, object]:
        """A JSON-ready description (the value abbreviated)."""
        preview = (self.value or b"")[:200].decode(errors="replace")
        return {"id": self.id, "reason": self.reason, "topic": self.topic,
                "partition": self.source_partition, "offset": self.source_offset,
                "at": self.at, "key": (self.key or b"").decode(errors="replace"),
                "value": preview}


def _int(raw: str) -> int | None:
    return int(raw) if raw.isdigit() else None


def to_dead_letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    """Parse a record of the dead-letter topic."""
    headers = tuple((key, bytes(value)) for key, value in (record.headers or ()))
    named = {key: value.decode(errors="replace") for key, value in headers}
    return DeadLetter(
        partition=record.partition, offset=record.offset, reason=named.get(DLQ_REASON, ""),
        topic=named.get(DLQ_TOPIC, ""), source_partition=_int(named.get(DLQ_PARTITION, "")),
        source_offset=_int(named.get(DLQ_OFFSET, "")), at=named.get(DLQ_AT, ""),
        key=record.key, value=record.value, headers=headers,
    )


async def read_dead_letters(kafka: KafkaSettings, limit: int | None = None) -> list[DeadLetter]:
    """Every entry present now (oldest first), at most `limit` of the newest."""
    topic = topics_for(kafka).dead_letter
    await ensure_topics(kafka, [topic])
    consumer: AIOKafkaConsumer = new_consumer(kafka, client_id="sluice-dead-letters",
                                              group_id=None, background=True)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await partition_ids(kafka, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        entries = [to_dead_letter(record) async for record in read_present(consumer, partitions)]
    finally:
        await consumer.stop()
    entries.sort(key=lambda entry: (entry.at, entry.partition, entry.offset))
    return entries[-limit:] if limit else entries


async def find_dead_letters(kafka: KafkaSettings, ids: Collection[str]) -> list[DeadLetter]:
    """The entries with these `partition:offset` ids; `NotFound` naming any missing one."""
    entries = [entry for entry in await read_dead_letters(kafka) if entry.id in ids]
    missing = set(ids) - {entry.id for entry in entries}
    if missing:
        raise NotFound(f"No dead letter with id {', '.join(sorted(missing))}.")
    return entries


async def replay(kafka: KafkaSettings, entries: Sequence[DeadLetter]) -> int:
    """Send each entry's original message back where it came from; how many were sent."""
    unknown = [entry.id for entry in entries if not entry.topic]
    if unknown:  # checked before sending any: a replay is all or nothing where it can be
        raise InvalidRequest(f"dead letter {', '.join(unknown)} does not say where it came from")
    producer = new_producer(kafka, client_id="sluice-dead-letters")
    await producer.start()
    try:
        for entry in entries:
            await producer.send_and_wait(entry.topic, entry.value, key=entry.key,
                                         headers=entry.original_headers())
    finally:
        await producer.stop()
    return len(entries)
