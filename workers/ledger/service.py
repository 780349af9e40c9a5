"""The ledger service: Kafka (requests, results, usage) → PostgreSQL, each effect once.

Per poll: decode, write everything in one database transaction, dead-letter what can never
be written, and only then commit the Kafka offsets. A crash anywhere before the commit
redelivers the batch, and the idempotent statements turn the redelivery into no change.

When PostgreSQL (or Kafka, for dead letters) fails, the batch is not skipped: the consumer
seeks back to the batch's first offsets, pauses its partitions and keeps polling during a
backoff (so it stays in its group), then reads the same records again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.errors import BrokerUnavailable, SluiceError
from broker.kafka import (
    Consumer,
    KafkaError,
    Producer,
    ensure_topics,
    new_consumer,
    new_producer,
    send_to_dead_letter,
    topics_for,
)
from broker.settings import KafkaSettings, LedgerSettings
from workers.ledger.content import PromptStore
from workers.ledger.rows import (
    Record,
    commit_positions,
    first_offsets,
    flatten,
    plan_batch,
    subscription_pattern,
)
from workers.ledger.store import write_batch

logger = logging.getLogger(__name__)

# Failures that may heal by themselves; anything else is a bug and stops the ledger.
_TRANSIENT = (SluiceError, SQLAlchemyError, KafkaError, OSError, TimeoutError)


class Ledger:
    """Records usage events, requests and final results in PostgreSQL.

    Args:
        kafka: where to read (topic prefix included).
        settings: batch size and poll interval.
        engine: the PostgreSQL engine (migrated).
        client_id: Kafka client id, for broker-side logs.
        min_backoff_s: first wait after a failed batch; doubles up to `max_backoff_s`.
        max_backoff_s: longest wait between two attempts at the same batch.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: LedgerSettings,
        engine: AsyncEngine,
        *,
        client_id: str = "sluice-ledger",
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 10.0,
    ) -> None:
        self._kafka = kafka
        self._settings = settings
        self._engine = engine
        self._topics = topics_for(kafka)
        self._client_id = client_id
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._backoff_s = min_backoff_s
        self._prompts = PromptStore(engine)
        self._failures = 0  # failed attempts at the current batch

    @property
    def group_id(self) -> str:
        """The consumer group, one per topic prefix."""
        return f"{self._kafka.topic_prefix}ledger"

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; an unfinished batch is left for the next run.

        Raises:
            BrokerUnavailable: Kafka cannot be reached at start.
        """
        topics = self._topics
        await ensure_topics(self._kafka, [topics.usage, topics.results, topics.dead_letter])
        consumer = new_consumer(
            self._kafka,
            client_id=self._client_id,
            group_id=self.group_id,
            background=True,
            # Request topics appear whenever a model is added; find them within seconds.
            metadata_max_age_ms=2000,
        )
        producer = new_producer(self._kafka, client_id=f"{self._client_id}-dead-letter")
        try:
            await producer.start()
            await consumer.start()
        except KafkaError as exc:
            await _stop_quietly(consumer, producer)
            raise BrokerUnavailable(f"cannot reach Kafka at {self._kafka.kafka_bootstrap}") from exc
        try:
            consumer.subscribe(pattern=subscription_pattern(self._kafka.topic_prefix))
            poll_ms = max(1, int(self._settings.ledger_flush_interval_s * 1000))
            while not stop.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=poll_ms, max_records=self._settings.ledger_batch_size
                )
                if fetched:
                    await self._handle(consumer, producer, flatten(fetched), stop)
        finally:
            await _stop_quietly(consumer, producer)

    async def _handle(
        self,
        consumer: Consumer,
        producer: Producer,
        records: list[Record],
        stop: asyncio.Event,
    ) -> None:
        batch = plan_batch(self._topics, records)
        try:
            refused = await write_batch(self._engine, batch)
            # Opted-in tenants only (privacy); after the batch, so every request row exists.
            await self._prompts.store(batch)
            # Dead letters go out after the rows are durable and before the commit: a crash
            # in between repeats a dead letter at worst, never loses one.
            for poison in [*batch.poison, *refused]:
                logger.warning(
                    "ledger: dead-lettering %s[%d]@%d: %s",
                    poison.record.topic,
                    poison.record.partition,
                    poison.record.offset,
                    poison.reason,
                )
                await send_to_dead_letter(producer, self._topics, poison.record, poison.reason)
        except _TRANSIENT as exc:
            self._failures += 1
            logger.warning(
                "ledger: batch of %d records not recorded (%s); offsets not committed, "
                "retrying in %.1fs",
                len(records),
                reason(exc),
                self._backoff_s,
            )
            rewind(consumer, records)
            await self._back_off(consumer, stop)
            return
        if self._failures:
            logger.info("ledger: batch recorded after %d failed attempts", self._failures)
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
            logger.info("ledger: offset commit failed (%s); batch will be re-read", exc)

    async def _back_off(self, consumer: Consumer, stop: asyncio.Event) -> None:
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


def reason(exc: BaseException, limit: int = 300) -> str:
    """The first line of an error, shortened: SQLAlchemy's messages go on with the whole
    statement and its parameters (kilobytes per failed batch, on every retry)."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    first = lines[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def rewind(consumer: Consumer, records: Iterable[Record]) -> None:
    """Seek back to the first of `records` in every partition still assigned to us."""
    assigned = consumer.assignment()
    for tp, offset in first_offsets(records).items():
        if tp in assigned:
            consumer.seek(tp, offset)


async def _stop_quietly(consumer: Consumer, producer: Producer) -> None:
    for client in (consumer, producer):
        with contextlib.suppress(KafkaError, OSError):
            await client.stop()
