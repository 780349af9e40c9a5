"""Delayed retries that never block a partition: `<prefix>retry.<model>` topics.

A request whose every deployment failed is published to its model's retry topic with a
`not before` time, and its original offset is committed: the request topic moves on. The
`RetryScheduler` (in every worker, one consumer group) holds retry messages in a heap
ordered by due time and republishes each to its request topic once due. Messages are
held, not slept on, so one message due in a minute never delays another due in a second,
even behind it on the same partition. Memory is bounded: with `max_held` messages held the
scheduler pauses its partitions and keeps polling (staying in its group) until some are
released. Offsets are committed only past republished messages, so a crash redelivers
held ones; due times are absolute, so they keep their schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeAlias

from broker.errors import PoisonMessage
from broker.kafka import (
    ConsumerRecord,
    KafkaError,
    Producer,
    RebalanceListener,
    TopicPartition,
    decode,
    encode,
    header,
    new_consumer,
)
from broker.kafka.offsets import OffsetTracker
from broker.settings import KafkaSettings
from broker.signing import service_headers, without_signature
from schemas import InferenceRequest, Topics
from workers.inference.processor import Retry

log = logging.getLogger("sluice.worker.retries")

NOT_BEFORE = "x-sluice-not-before"
"""Header: when the retry is due, in Unix milliseconds."""
RETRY_TOPIC = "x-sluice-retry-topic"
"""Header: the request topic the retry goes back to."""

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


async def schedule_retry(
    producer: Producer, topics: Topics, record: Record, retry: Retry
) -> None:
    """Publish `retry` to its model's retry topic, keeping the original's headers."""
    ours = (NOT_BEFORE, RETRY_TOPIC)
    headers = [(key, value) for key, value in (record.headers or ()) if key not in ours]
    headers += [
        (NOT_BEFORE, str(int(retry.due.timestamp() * 1000)).encode()),
        (RETRY_TOPIC, record.topic.encode()),
    ]
    await producer.send_and_wait(
        topics.retry(retry.request.model), encode(retry.request),
        key=retry.request.id.encode(), headers=headers,
    )


def due_at(record: Record) -> float:
    """When a retry message is due (Unix seconds); a missing or bad header means now."""
    raw = header(record, NOT_BEFORE)
    try:
        return int(raw) / 1000 if raw is not None else 0.0
    except ValueError:
        return 0.0


class _Forget(RebalanceListener):  # type: ignore[misc]
    def __init__(self, scheduler: RetryScheduler) -> None:
        self._scheduler = scheduler

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._scheduler.commit()
        self._scheduler.drop(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass


class RetryScheduler:
    """Holds retry messages until due, then republishes them to their request topics."""

    def __init__(
        self,
        kafka: KafkaSettings,
        producer: Producer,
        topics: Topics,
        models: Iterable[str],
        *,
        max_held: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kafka = kafka
        self._producer = producer
        self._topics = topics
        self._retry_topics = [topics.retry(model) for model in models]
        self._max_held = max_held
        self._clock = clock
        self._held: list[tuple[float, int, TopicPartition, Record]] = []
        self._sequence = itertools.count()
        self._tracker = OffsetTracker()
        self._consumer = new_consumer(
            kafka, client_id="sluice-worker-retries", group_id=f"{kafka.topic_prefix}retries",
            background=True,
        )
        self._paused = False
        self.republished = 0

    @property
    def held(self) -> int:
        """How many retry messages wait for their time."""
        return len(self._held)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, hold and republish until `stop` is set."""
        self._consumer.subscribe(self._retry_topics, listener=_Forget(self))
        await self._consumer.start()
        try:
            while not stop.is_set():
                self._apply_backpressure()
                wait_ms = 100
                if self._held:
                    wait_ms = max(0, min(wait_ms, int((self._held[0][0] - self._clock()) * 1000)))
                try:
                    batch = await self._consumer.getmany(timeout_ms=wait_ms, max_records=500)
                except KafkaError as exc:
                    log.warning("polling retry topics failed: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                for tp, records in batch.items():
                    for record in records:
                        self._tracker.started(tp, record.offset)
                        entry = (due_at(record), next(self._sequence), tp, record)
                        heapq.heappush(self._held, entry)
                await self._release_due()
                await self.commit()
        finally:
            with contextlib.suppress(KafkaError):
                await self.commit()
            await self._consumer.stop()

    def _apply_backpressure(self) -> None:
        assigned = self._consumer.assignment()
        if len(self._held) >= self._max_held and not self._paused and assigned:
            self._consumer.pause(*assigned)
            self._paused = True
        elif len(self._held) < self._max_held and self._paused:
            self._consumer.resume(*assigned)
            self._paused = False

    async def _release_due(self) -> None:
        assigned = self._consumer.assignment()
        while self._held and self._held[0][0] <= self._clock():
            due, sequence, tp, record = self._held[0]
            if tp not in assigned:  # revoked meanwhile: its new owner releases it
                heapq.heappop(self._held)
                continue
            target = header(record, RETRY_TOPIC) or self._target_of(record)
            try:
                if target:
                    await self._producer.send_and_wait(
                        target, record.value, key=record.key, headers=self._signed(record),
                    )
            except KafkaError as exc:
                log.warning("republishing a retry failed (%s); trying again in 1s", exc)
                heapq.heapreplace(self._held, (due + 1.0, sequence, tp, record))
                return
            heapq.heappop(self._held)
            self._tracker.finished(tp, record.offset)
            self.republished += 1

    def _signed(self, record: Record) -> list[tuple[str, bytes]]:
        # A retry is the request as a worker re-encoded it (next attempt), so the sender's
        # signature no longer matches: it goes back signed by us. Only workers may write
        # retry topics (the ACLs in compose.yaml), and they write only requests they had
        # verified; that is what makes signing what we read here sound.
        headers = [(k, v) for k, v in (record.headers or ()) if k != NOT_BEFORE]
        return [*without_signature(headers), *service_headers(self._kafka, record.value or b"")]

    def _target_of(self, record: Record) -> str | None:
        # A retry without our header (written by hand, or by an older worker): route it by
        # its own model and lane; an undecodable one is dropped, it could never run anyway.
        try:
            request = decode(InferenceRequest, record)
        except PoisonMessage as exc:
            log.warning("dropping undecodable retry message: %s", exc)
            return None
        return self._topics.requests(request.model, request.lane)

    def drop(self, partitions: set[TopicPartition]) -> None:
        """Forget revoked partitions' held messages; their new owner reads them again."""
        self._held = [entry for entry in self._held if entry[2] not in partitions]
        heapq.heapify(self._held)
        self._tracker.forget(partitions)

    async def commit(self) -> None:
        """Commit past every republished message (never past a held one)."""
        positions = self._tracker.pending_commits()
        if not positions:
            return
        try:
            await self._consumer.commit(positions)
        except KafkaError as exc:
            log.warning("committing retry offsets failed: %s", exc)
            return
        self._tracker.mark_committed(positions)
