"""The ledger service: Kafka (requests, results, usage) → PostgreSQL, each effect once.

Per poll: decode, write everything in one database transaction, dead-letter what can never
be written, and only then commit the Kafka offsets (`broker.kafka.ApplyLoop`, shared with
the deliverer and the batch tracker). A crash anywhere before the commit redelivers the
batch, and the idempotent statements turn the redelivery into no change; a failed batch is
read again after a backoff, never skipped.

Requests are recorded only when they prove who sent them, as workers check
(`workers.inference.provenance`): an unsigned or forged request on a request topic is
dead-lettered by the worker and leaves no row here either, so nobody can plant `queued`
rows under another tenant's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from broker.errors import BrokerUnavailable, PoisonMessage
from broker.kafka import (
    ApplyLoop,
    KafkaError,
    Producer,
    ensure_topics,
    new_producer,
    send_to_dead_letter,
    topics_for,
)
from broker.kafka.ledger_offsets import ledger_group
from broker.settings import KafkaSettings, LedgerSettings
from broker.stores.response_cache import keep_answers
from workers.inference.provenance import RequestProvenance
from workers.ledger.content import PromptStore
from workers.ledger.metered import observe_batch
from workers.ledger.rows import Kind, LedgerBatch, Record, plan_batch, subscription_pattern
from workers.ledger.store import write_batch
from workers.ledger.tracing import traced_apply

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)



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
        provenance: RequestProvenance | None = None,
    ) -> None:
        self._kafka = kafka
        # None: every decodable request is recorded (a closed cluster, unit tests).
        self._provenance = provenance
        self._settings = settings
        self._engine = engine
        self._topics = topics_for(kafka)
        self._client_id = client_id
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._prompts = PromptStore(engine)
        self._producer: Producer | None = None  # dead letters, while running

    @property
    def group_id(self) -> str:
        """The consumer group, one per topic prefix."""
        return ledger_group(self._kafka.topic_prefix)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; an unfinished batch is left for the next run.

        Raises:
            BrokerUnavailable: Kafka cannot be reached at start.
        """
        topics = self._topics
        await ensure_topics(self._kafka, [topics.usage, topics.results, topics.dead_letter])
        producer = new_producer(self._kafka, client_id=f"{self._client_id}-dead-letter")
        try:
            await producer.start()
        except KafkaError as exc:
            await _stop_quietly(producer)
            raise BrokerUnavailable(f"cannot reach Kafka at {self._kafka.kafka_bootstrap}") from exc
        self._producer = producer
        loop = ApplyLoop(
            self._kafka, name="ledger", group_id=self.group_id,
            apply=traced_apply(self._apply),  # each record's span in its request's trace
            pattern=subscription_pattern(self._kafka.topic_prefix),
            batch_size=self._settings.ledger_batch_size,
            poll_ms=max(1, int(self._settings.ledger_flush_interval_s * 1000)),
            min_backoff_s=self._min_backoff_s, max_backoff_s=self._max_backoff_s,
            client_id=self._client_id,
            # Request topics appear whenever a model is added; find them within seconds.
            metadata_max_age_ms=2000,
        )
        try:
            await loop.run(stop)
        finally:
            await _stop_quietly(producer)

    async def _apply(self, records: list[Record]) -> None:
        """Record one batch in one transaction; dead-letter what can never be recorded."""
        assert self._producer is not None
        batch = await self._proven(plan_batch(self._topics, records))
        refused = await write_batch(self._engine, batch)
        # Opted-in tenants only (privacy); after the batch, so every request row exists.
        await self._prompts.store(batch)
        # Succeeded answers of requests with a cache ticket (README "Caching"); after the
        # batch, off every request's path, and idempotent when the batch is read again.
        await keep_answers(self._engine, [row.result for row in batch.rows[Kind.RESULT]
                                          if row.result is not None])
        # Dead letters go out after the rows are durable and before the commit: a crash
        # in between repeats a dead letter at worst, never loses one.
        for poison in [*batch.poison, *refused]:
            logger.warning("ledger: dead-lettering %s[%d]@%d: %s", poison.record.topic,
                           poison.record.partition, poison.record.offset, poison.reason)
            await send_to_dead_letter(self._producer, self._topics, poison.record,
                                      poison.reason)
        observe_batch(batch, refused)  # rows, lag, spend, dead letters (workers.ledger.metered)

    async def _proven(self, batch: LedgerBatch) -> LedgerBatch:
        """`batch` without the requests that do not prove who sent them."""
        if self._provenance is None:
            return batch
        proven = []
        for row in batch.rows[Kind.REQUEST]:
            assert row.request is not None  # request rows carry their request
            try:
                await self._provenance.verify(row.record, row.request)
            except PoisonMessage as exc:  # the worker dead-letters it, with the reason
                logger.info("ledger: not recording request %s: %s", row.key, exc)
                continue
            proven.append(row)
        batch.rows[Kind.REQUEST] = proven
        return batch


async def _stop_quietly(producer: Producer) -> None:
    with contextlib.suppress(KafkaError, OSError):
        await producer.stop()
