"""One model's request topic of one lane: fetch, decide, dispatch, commit.

Each polled message becomes a task of the pool (`workers.inference.pool`), which holds the
slots; when they are full the consumer pauses its partitions and keeps polling (so the
group does not evict it). Offsets are committed only up to the oldest unfinished message
of each partition (`broker.kafka.offsets.OffsetTracker`), after its result and usage were
acknowledged by Kafka: a crash redelivers unfinished work, never skips it.

Before dispatching, a batch of records is decoded, checked for who sent it
(`workers.inference.provenance`) and, where it may be a redelivery, against the results of
record. Fair share: a request of a tenant already holding its share of the worker moves to
the model's batch topic (`ModelConsumer._overflow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from broker import metrics
from broker.errors import PoisonMessage, UnprovenRequest
from broker.kafka import (
    Consumer,
    KafkaError,
    RebalanceListener,
    Record,
    TopicPartition,
    decode,
    header,
    is_too_large,
    message_limit,
    send_to_dead_letter,
)
from broker.kafka.fetch_pacing import pacing_for
from broker.kafka.offsets import OffsetTracker
from schemas import InferenceRequest, Lane
from workers.inference.ledger_catch_up import LedgerCatchUp, catch_up_for
from workers.inference.outcomes import too_large_to_publish
from workers.inference.tracing import traced_handling

if TYPE_CHECKING:
    from workers.inference.pool import InferencePool

log = logging.getLogger("sluice.worker")

CLOCK_SKEW_S = 5.0
# Marks a request a worker moved to the batch topic because its tenant was over its share.
OVERFLOW_HEADER = "x-sluice-overflow"


def may_be_redelivery(timestamp_ms: int, assigned_at: float | None) -> bool:
    """Whether another worker may already have processed a message of this partition.

    Only a message that existed before we were given its partition can have been processed
    by another worker (one that crashed before committing). Newer ones skip the results of
    record, so in steady state the check costs nothing. The margin covers clock skew
    between the producer (message timestamp) and this machine.
    """
    if assigned_at is None:
        return True
    return timestamp_ms / 1000 < assigned_at + CLOCK_SKEW_S


class CommitOnRevoke(RebalanceListener):  # type: ignore[misc]
    def __init__(self, lane: ModelConsumer):
        self._lane = lane

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._lane.commit(only=revoked)
        self._lane.tracker.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._lane.joined = True
        self._lane.paused.clear()
        now = time.time()
        for tp in assigned:
            self._lane.assigned_at[tp] = now


class ModelConsumer:
    """Consumes one model's request topic of one lane in its own consumer group."""

    def __init__(self, pool: InferencePool, model: str, consumer: Consumer,
                 lane: Lane = Lane.INTERACTIVE, catch_up: LedgerCatchUp | None = None):
        self.pool = pool
        # After a takeover: wait for the ledger to record the dead worker's answers (the
        # pool's, shared by its lanes; a lane made alone gets its own).
        self.catch_up = catch_up or catch_up_for(pool.kafka, pool.final_results)
        self._stop: asyncio.Event | None = None
        self.model = model
        self.lane = lane
        self.consumer = consumer
        self.tracker = OffsetTracker()
        self.paused: set[TopicPartition] = set()
        self.assigned_at: dict[TopicPartition, float] = {}
        self.joined = False  # the group gave us our share (possibly none) at least once

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        committer = asyncio.create_task(self._commit_periodically(stop))
        pacing = None if self.lane is Lane.BATCH else pacing_for(self.consumer, self.pool.kafka)
        try:
            while not stop.is_set():
                room = self.pool.room(self.lane)
                if room <= 0:
                    await self._wait_for_slot()
                    continue
                self._resume()
                batch = await self.consumer.getmany(timeout_ms=100, max_records=min(room, 500))
                if pacing is not None:
                    await pacing.observe_poll(batch)
                if batch:
                    await self._dispatch(batch)
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    async def _wait_for_slot(self) -> None:
        # Full: pause fetching but keep polling so the group keeps us (max_poll_interval).
        assigned = self.consumer.assignment()
        if assigned and not self.paused:
            self.consumer.pause(*assigned)
            self.paused = set(assigned)
        await self.consumer.getmany(timeout_ms=0)
        self.pool.slots.freed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pool.slots.freed.wait(), 0.5)

    def _resume(self) -> None:
        if self.paused:
            self.consumer.resume(*self.paused)
            self.paused.clear()

    async def _dispatch(self, batch: Mapping[TopicPartition, Sequence[Record]]) -> None:
        decoded: list[tuple[TopicPartition, Record, InferenceRequest]] = []
        for tp, records in batch.items():
            for record in records:
                self.tracker.started(tp, record.offset)
                try:
                    request = decode(InferenceRequest, record)
                    self._check_model(request)
                    # Who sent it: unproven ones (UnprovenRequest) are dead-lettered too.
                    request = await self.pool.provenance.verify(record, request)
                except PoisonMessage as exc:
                    metrics.observe_dead_letter("worker", "unproven" if isinstance(
                        exc, UnprovenRequest) else "poison")
                    self.pool.track(self._dead_letter(tp, record, str(exc)), self.lane)
                    continue
                decoded.append((tp, record, request))
        done, waiting = await self._already_final(decoded)
        # Taken over from a dead worker, maybe answered already: they wait (holding their
        # slots, their offsets uncommitted) for the ledger to catch up, the rest go on.
        verdict = asyncio.ensure_future(self._final_after_catch_up(waiting)) \
            if waiting else None
        overflow: list[tuple[TopicPartition, Record, InferenceRequest]] = []
        for tp, record, request in decoded:
            if verdict is not None and request.id in waiting:
                self.pool.track(self._handle_unless_final(verdict, tp, record, request),
                                self.lane, request.tenant)
            elif request.id in done:
                log.info("request %s already has a final result (or its copy on the batch "
                         "topic will); not calling again", request.id)
                self.tracker.finished(tp, record.offset)
            elif self.lane is Lane.INTERACTIVE and self.pool.over_fair_share(request.tenant):
                overflow.append((tp, record, request))
            else:
                # In its consumer span (the request's trace) and log scope.
                self.pool.track(traced_handling(record, request, self._handle(tp, record, request)),
                                self.lane, request.tenant)
        if overflow:
            self.pool.track(self._overflow(overflow), self.lane)

    async def _overflow(self, items: list[tuple[TopicPartition, Record, InferenceRequest]],
                        ) -> None:
        # Their tenants hold their share of this worker already: the requests wait on the
        # model's batch topic instead of in front of other tenants' requests here. They keep
        # their ids, reply_to and deadlines; only their priority changes. Sent together
        # (one produce request per partition, not one per message), so a burst of one
        # tenant is moved out of the way at Kafka's pace.
        topic = self.pool.topics.requests(self.model, Lane.BATCH)

        async def send(batch: list[tuple[TopicPartition, Record, InferenceRequest]]) -> None:
            deliveries = [await self.pool.producer.send(
                topic, record.value, key=record.key,
                headers=[*record.headers, (OVERFLOW_HEADER, b"1")]) for _, record, _ in batch]
            await asyncio.gather(*deliveries)

        moved = items
        try:
            await self.pool.publish_with_retry(lambda: send(items))
        except KafkaError as exc:
            if not is_too_large(exc):
                raise
            moved = []
            for item in items:  # our header tipped one over: serve that one here
                try:
                    await self.pool.publish_with_retry(lambda: send([item]))  # noqa: B023
                    moved.append(item)
                except KafkaError as single:
                    if not is_too_large(single):
                        raise
                    await self._handle(*item)
        self.pool.overflowed += len(moved)
        try:  # a redelivered original is skipped, not answered twice (workers/.../results)
            await self.pool.final_results.record_moved([request.id for _, _, request in moved])
        except Exception:
            log.warning("recording moved requests failed; if this worker stops before "
                        "committing, their originals may be answered twice", exc_info=True)
        for tp, record, _ in moved:
            self.tracker.finished(tp, record.offset)

    async def _final_or_moved(self, request_ids: list[str]) -> set[str]:
        done = await self.pool.final_results.already_final(request_ids)
        if self.lane is Lane.INTERACTIVE:  # moved to the batch topic by a worker before
            done |= await self.pool.final_results.moved(request_ids)
        return done

    async def _already_final(
        self, decoded: list[tuple[TopicPartition, Record, InferenceRequest]]
    ) -> tuple[set[str], dict[str, float]]:
        """The requests already final (or moved), and those a dead worker may have answered
        that the ledger may not have recorded yet, with their partitions' assignment time."""
        # A moved request may have been moved twice (a publish retried after a lost
        # acknowledgement): its copies are checked like redeliveries.
        suspects = [
            request.id for tp, record, request in decoded
            if may_be_redelivery(record.timestamp, self.assigned_at.get(tp))
            or header(record, OVERFLOW_HEADER) is not None
        ]
        if not suspects:
            return set(), {}
        try:
            done = await self._final_or_moved(suspects)
        except Exception:
            log.warning("results of record unavailable; redelivered requests may be "
                        "called again", exc_info=True)
            return set(), {}
        # Just after taking a partition over (a worker crashed), a request the dead worker
        # answered may not be recorded by the ledger yet: it waits until the ledger has read
        # every result published so far (`workers.inference.ledger_catch_up`), then is
        # looked up once more, so an answer already published is not billed twice. Only
        # messages older than the assignment (a dead worker's backlog), never new ones
        # within the clock-skew margin: a fresh worker's first requests must not wait.
        older = {request.id: self.assigned_at[tp] for tp, record, request in decoded
                 if self.assigned_at.get(tp) is not None
                 and record.timestamp / 1000 < self.assigned_at[tp]}
        return done, {request_id: older[request_id] for request_id in suspects
                      if request_id in older and request_id not in done}

    async def _final_after_catch_up(self, waiting: dict[str, float]) -> set[str]:
        """Which of `waiting` the ledger has recorded as final once it caught up."""
        try:
            if await self.catch_up.after_takeover(max(waiting.values()), self._stop):
                return await self._final_or_moved(list(waiting))
        except Exception:
            log.warning("results of record unavailable; redelivered requests may be "
                        "called again", exc_info=True)
        return set()

    async def _handle_unless_final(self, verdict: asyncio.Future[set[str]],
                                   tp: TopicPartition, record: Record,
                                   request: InferenceRequest) -> None:
        if request.id in await verdict:
            log.info("request %s was answered by the worker that held it before; not "
                     "calling again", request.id)
            self.tracker.finished(tp, record.offset)
            return
        await traced_handling(record, request, self._handle(tp, record, request))

    def _check_model(self, request: InferenceRequest) -> None:
        if request.model != self.model or request.model not in self.pool.config.models:
            raise PoisonMessage(
                f"request for model '{request.model}' arrived on the topic of '{self.model}'"
            )

    async def _dead_letter(self, tp: TopicPartition, record: Record, reason: str) -> None:
        log.warning("dead-lettering %s[%d]@%d: %s", tp.topic, tp.partition, record.offset, reason)
        try:
            await self.pool.publish_with_retry(
                lambda: send_to_dead_letter(self.pool.producer, self.pool.topics, record, reason)
            )
        except KafkaError as exc:
            if not is_too_large(exc):
                raise
            # Our headers pushed a record at the very limit over it; it stays readable at
            # its offset, which the log names.
            log.error("cannot dead-letter %s[%d]@%d (%s): over the size limit; skipped",
                      tp.topic, tp.partition, record.offset, reason)
        self.tracker.finished(tp, record.offset)

    async def _handle(self, tp: TopicPartition, record: Record, request: InferenceRequest) -> None:
        # A request moved here for fair share waits for budget like the batch work it
        # queued with (its deadline stays its own lane's).
        moved = self.lane is Lane.BATCH and header(record, OVERFLOW_HEADER) is not None
        admission = self.pool.native_admission
        refusal = None if admission is None else await admission.refusal(record, request)
        outcome = (self.pool.processor.refused(request, refusal) if refusal is not None
                   else await self.pool.processor.process(request,
                                                          Lane.BATCH if moved else None))
        reply_to = request.reply_to or header(record, "reply_to")
        published = outcome
        try:
            await self.pool.publish_with_retry(
                lambda: self.pool.publish(outcome, reply_to, record))
        except KafkaError as exc:
            if not is_too_large(exc):
                raise
            limit = message_limit(self.pool.kafka)
            log.warning("result of %s is over the %d-byte message limit; answering "
                        "result_too_large", request.id, limit)
            smaller = too_large_to_publish(outcome, request, limit)
            await self.pool.publish_with_retry(
                lambda: self.pool.publish(smaller, reply_to, record))
            published = smaller
        if published.result is not None:  # a final answer (a retry is counted when sent)
            metrics.observe_final(published.result, self.lane, published.usage)
        self.tracker.finished(tp, record.offset)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        positions = self.tracker.pending_commits()
        if only is not None:
            positions = {tp: pos for tp, pos in positions.items() if tp in only}
        if not positions:
            return
        try:
            await self.consumer.commit(positions)
        except KafkaError as exc:  # a rebalance in progress; the next round retries
            log.warning("commit of %s failed: %s", self.model, exc)
            return
        self.tracker.mark_committed(positions)

    async def _commit_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.pool.worker_settings.commit_interval_s)
            await self.commit()
