"""The one consumer loop of every service that turns records into database effects.

consume a batch → apply it (the caller's one transaction; what can never apply is
dead-lettered inside it) → commit the batch's offsets, after the database commit → next.
When applying fails with an error that may heal (PostgreSQL or Kafka away), the batch is
not skipped: the consumer seeks back to the batch's first offsets, pauses its partitions
and keeps polling through a doubling backoff (so it stays in its group), then reads the
same records again. Guarantee 3 (one ledger row per billed call, none lost) is this loop
plus idempotent writes; the ledger, the webhook deliverer and the batch tracker share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from broker.errors import BrokerUnavailable
from broker.kafka.clients import new_consumer
from broker.settings import KafkaSettings
from broker.stores.database import TRANSIENT_DB_ERRORS

log = logging.getLogger("sluice.kafka")

# What may heal by itself in a service that writes records to the database: the database's
# failures, and Kafka's (dead letters, commits).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_DB_ERRORS, KafkaError)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Apply: TypeAlias = Callable[[list[Record]], Awaitable[None]]


def flatten(fetched: Mapping[TopicPartition, Sequence[Record]]) -> list[Record]:
    """The records of one `getmany`, partition by partition, each in offset order."""
    return [record for records in fetched.values() for record in records]


def commit_positions(records: Iterable[Record]) -> dict[TopicPartition, int]:
    """Per partition, the position after the last record: what to commit once applied."""
    positions: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        positions[tp] = max(positions.get(tp, 0), record.offset + 1)
    return positions


def first_offsets(records: Iterable[Record]) -> dict[TopicPartition, int]:
    """Per partition, the first offset: where to seek back to when a batch must be redone."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = min(offsets.get(tp, record.offset), record.offset)
    return offsets


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """The first line of an error, shortened: SQLAlchemy's messages go on with the whole
    statement and its parameters (kilobytes per failed batch, on every retry)."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    first = lines[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


class ApplyLoop:
    """Feeds one consumer group's records to `apply`, committing only what was applied.

    Args:
        kafka: where to read.
        name: for logs ("ledger", "deliver", "batches").
        group_id: the consumer group.
        topics: topics to read, or `pattern`: a regex of topic names (new matches are
            found within `metadata_max_age_ms`).
        apply: applies one batch durably; raises one of `transient` to have it redone.
        transient: errors that may heal by themselves; anything else stops the loop.
            By default `TRANSIENT_ERRORS`: the database's and Kafka's.
        batch_size: records per batch at most.
        poll_ms: how long one poll waits for records.
        min_backoff_s, max_backoff_s: the wait after a failed batch, doubling.
        consumer_options: more `new_consumer` options (client_id, metadata_max_age_ms…).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        name: str,
        group_id: str,
        apply: Apply,
        transient: tuple[type[BaseException], ...] = TRANSIENT_ERRORS,
        topics: Sequence[str] = (),
        pattern: str | None = None,
        batch_size: int = 500,
        poll_ms: int = 200,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 10.0,
        **consumer_options: Any,
    ) -> None:
        self._kafka = kafka
        self._name = name
        self._group_id = group_id
        self._apply = apply
        self._transient = transient
        self._topics = list(topics)
        self._pattern = pattern
        self._batch_size = batch_size
        self._poll_ms = poll_ms
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._backoff_s = min_backoff_s
        self._failures = 0
        self._consumer_options = consumer_options

    async def run(self, stop: asyncio.Event) -> None:
        """Apply batches until `stop` is set; an unfinished batch is left for the next run.

        Raises:
            BrokerUnavailable: Kafka cannot be reached at start.
        """
        consumer = new_consumer(self._kafka, group_id=self._group_id, background=True,
                                **{"client_id": f"sluice-{self._name}",
                                   **self._consumer_options})
        try:
            await consumer.start()
        except KafkaError as exc:
            with contextlib.suppress(KafkaError, OSError):
                await consumer.stop()
            raise BrokerUnavailable(f"cannot reach Kafka at {self._kafka.kafka_bootstrap}") from exc
        try:
            if self._pattern is not None:
                consumer.subscribe(pattern=self._pattern)
            else:
                consumer.subscribe(self._topics)
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=self._poll_ms,
                                                 max_records=self._batch_size)
                if fetched:
                    await self._handle(consumer, flatten(fetched), stop)
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await consumer.stop()

    async def _handle(self, consumer: Any, records: list[Record], stop: asyncio.Event) -> None:
        try:
            await self._apply(records)
        except self._transient as exc:
            self._failures += 1
            log.warning("%s: batch of %d records not recorded (%s); offsets not committed, "
                        "retrying in %.1fs", self._name, len(records), short_reason(exc),
                        self._backoff_s)
            rewind(consumer, records)
            await self._back_off(consumer, stop)
            return
        if self._failures:
            log.info("%s: batch recorded after %d failed attempts", self._name, self._failures)
        self._failures = 0
        self._backoff_s = self._min_backoff_s
        # Partitions a rebalance took away meanwhile are their new owner's to commit (aiokafka
        # refuses the whole commit if one is included); it re-reads them, with no effect.
        assigned = consumer.assignment()
        positions = {tp: at for tp, at in commit_positions(records).items() if tp in assigned}
        if not positions:
            return
        try:
            await consumer.commit(positions)
        except KafkaError as exc:
            # Typically a rebalance took the partitions away. The new owner re-reads the
            # batch and the idempotent writes make that a no-op.
            log.info("%s: offset commit failed (%s); batch will be re-read", self._name, exc)

    async def _back_off(self, consumer: Any, stop: asyncio.Event) -> None:
        deadline = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)
        try:
            while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
                # Paused partitions return nothing, but polling keeps us in the group
                # (max_poll_interval_ms). Partitions assigned meanwhile are not paused yet.
                consumer.pause(*consumer.assignment())
                stray = await consumer.getmany(timeout_ms=max(1, int(min(remaining, 0.2) * 1000)))
                rewind(consumer, flatten(stray))
        finally:
            consumer.resume(*consumer.assignment())


def rewind(consumer: Any, records: Iterable[Record]) -> None:
    """Seek back to the first of `records` in every partition still assigned to us."""
    assigned = consumer.assignment()
    for tp, offset in first_offsets(records).items():
        if tp in assigned:
            consumer.seek(tp, offset)
