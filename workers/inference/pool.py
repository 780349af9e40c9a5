"""The inference pool: one consumer group per model topic and lane, many requests in flight.

Each polled message becomes a task; a process-wide bound caps how many run at once. When
the bound is reached the pool pauses its partitions and keeps polling (so the group does
not evict it) instead of nacking or spinning. Offsets are committed only up to the oldest
unfinished message of each partition (`broker.kafka.offsets.OffsetTracker`), after its result and
usage were acknowledged by Kafka: a crash redelivers unfinished work, never skips it.

Priority lanes: each model has an interactive and a batch topic, each consumed by its own
consumer (and group). Interactive takes any free slot. Batch fetches only while no
interactive request waits for budget in this worker and batch holds less than
`batch_slot_share` of the slots, so interactive always finds room; at the gates
(`workers.inference.lanes`) interactive goes first too. Nothing has to wake batch up:
its consumer re-checks whenever a slot frees, and at least twice a second.

Fair share between tenants: a topic is one FIFO, so a tenant that queued thousands of
requests would have every other tenant's requests wait behind them. One tenant may hold
at most `tenant_slot_share` of a worker's slots (times its weight, `tenants.weight`) with
interactive requests; a request of a tenant at its share is moved to the model's batch
topic (acknowledged there before its offset counts as done) and served from there with
the spare capacity. So the interactive topic never holds a backlog of one tenant in front
of the others, and at the gates tenants take turns (`workers.inference.fair_queue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeAlias

from broker.budgets import BudgetStore, MemoryBudgetStore
from broker.config import SluiceConfig
from broker.errors import PoisonMessage
from broker.kafka import (
    Consumer,
    ConsumerRecord,
    KafkaError,
    Producer,
    RebalanceListener,
    TopicPartition,
    decode,
    encode,
    ensure_topics,
    header,
    is_too_large,
    message_limit,
    new_consumer,
    new_producer,
    send_to_dead_letter,
    topics_for,
)
from broker.kafka.fetch_pacing import pacing_for
from broker.kafka.offsets import OffsetTracker
from broker.settings import KafkaSettings, WorkerSettings
from broker.tokens import encoding_for_model
from schemas import InferenceRequest, Lane, StreamChunk
from schemas.streaming import CHUNK_KIND
from workers.inference.background import Background
from workers.inference.lanes import BudgetGates
from workers.inference.native_admission import NativeAdmission
from workers.inference.outcomes import publish_outcome, too_large_to_publish
from workers.inference.processor import Outcome, RequestProcessor
from workers.inference.provenance import RequestProvenance
from workers.inference.reply_partitions import StickyReplyPartitions
from workers.inference.results import FinalResults
from workers.inference.tenant_weights import TenantWeights
from workers.providers import Provider

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

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


class _Slots:
    """A process-wide bound on requests in flight, with a wake-up when one frees."""

    def __init__(self, size: int):
        self.size = size
        self.used = 0
        self.freed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.size - self.used

    def release(self) -> None:
        self.used -= 1
        self.freed.set()


class _CommitOnRevoke(RebalanceListener):  # type: ignore[misc]
    def __init__(self, lane: _ModelConsumer):
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


class _ModelConsumer:
    """Consumes one model's request topic of one lane in its own consumer group."""

    def __init__(self, pool: InferencePool, model: str, consumer: Consumer,
                 lane: Lane = Lane.INTERACTIVE):
        self.pool = pool
        self.model = model
        self.lane = lane
        self.consumer = consumer
        self.tracker = OffsetTracker()
        self.paused: set[TopicPartition] = set()
        self.assigned_at: dict[TopicPartition, float] = {}
        self.joined = False  # the group gave us our share (possibly none) at least once

    async def run(self, stop: asyncio.Event) -> None:
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
                    self.pool.track(self._dead_letter(tp, record, str(exc)), self.lane)
                    continue
                decoded.append((tp, record, request))
        done = await self._already_final(decoded)
        overflow: list[tuple[TopicPartition, Record, InferenceRequest]] = []
        for tp, record, request in decoded:
            if request.id in done:
                log.info("request %s already has a final result (or its copy on the batch "
                         "topic will); not calling again", request.id)
                self.tracker.finished(tp, record.offset)
            elif self.lane is Lane.INTERACTIVE and self.pool.over_fair_share(request.tenant):
                overflow.append((tp, record, request))
            else:
                self.pool.track(self._handle(tp, record, request), self.lane, request.tenant)
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

    async def _already_final(
        self, decoded: list[tuple[TopicPartition, Record, InferenceRequest]]
    ) -> set[str]:
        # A moved request may have been moved twice (a publish retried after a lost
        # acknowledgement): its copies are checked like redeliveries.
        suspects = [
            request.id for tp, record, request in decoded
            if may_be_redelivery(record.timestamp, self.assigned_at.get(tp))
            or header(record, OVERFLOW_HEADER) is not None
        ]
        if not suspects:
            return set()
        try:
            done = await self.pool.final_results.already_final(suspects)
            if self.lane is Lane.INTERACTIVE:  # moved to the batch topic by a worker before
                done |= await self.pool.final_results.moved(suspects)
            return done
        except Exception:
            log.warning("results of record unavailable; redelivered requests may be "
                        "called again", exc_info=True)
            return set()

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


class InferencePool:
    """Serves the given models until `stop` is set, then drains in-flight work."""

    def __init__(
        self,
        kafka: KafkaSettings,
        worker_settings: WorkerSettings,
        config: SluiceConfig,
        models: Sequence[str],
        providers: Mapping[str, Provider],
        final_results: FinalResults,
        *,
        budgets: BudgetStore | None = None,
        drain_timeout_s: float = 30.0,
        provenance: RequestProvenance | None = None,
        native_admission: NativeAdmission | None = None,
        tenant_weights: TenantWeights | None = None,
    ):
        self.kafka = kafka
        self.provenance = provenance or RequestProvenance(kafka)
        # Key-signed Kafka-native requests are admitted here (None: not checked).
        self.native_admission = native_admission
        self.worker_settings = worker_settings
        self.config = config
        self.models = list(models)
        self.topics = topics_for(kafka)
        # Without a shared store budgets hold in this process only (tests, one worker).
        self.weights = tenant_weights or TenantWeights()
        self.budgets = BudgetGates(config.deployments, budgets or MemoryBudgetStore(),
                                   batch_margin=worker_settings.batch_budget_margin,
                                   weight=self.weights)
        self.processor = RequestProcessor(config, providers, budgets=self.budgets,
                                          emit=self.emit_chunk)
        self.final_results = final_results
        self.slots = _Slots(worker_settings.worker_concurrency)
        self.lane_used = dict.fromkeys(Lane, 0)
        # Fair share: one tenant holds at most this many interactive slots of this worker;
        # the rest of its requests overflow to the batch topic (`_ModelConsumer._overflow`).
        self.tenant_cap = max(1, int(self.slots.size * worker_settings.tenant_slot_share))
        self.tenant_used: Counter[str] = Counter()
        self.overflowed = 0
        self.producer: Producer = new_producer(
            kafka, client_id="sluice-worker", linger_ms=0
        )
        # Only the embedded broker needs replies grouped by time slot (see the module);
        # on Apache Kafka they go by key.
        self.reply_partitions = StickyReplyPartitions(
            self.producer.partitions_for, self.topics.replies(""),
            slot_s=worker_settings.reply_partition_slot_s,
        ) if kafka.kafka_engine == "tansu" else None
        # The reply partition a streamed request's chunks went to: its result must follow.
        self._stream_partitions: dict[str, int | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lanes: list[_ModelConsumer] = []
        self._drain_timeout_s = drain_timeout_s
        self._stop = asyncio.Event()

    def state(self) -> dict[str, Any]:
        """The pool's part of the worker's `GET /status`."""
        return {
            "models": self.models,
            "breakers": self.processor.breakers.snapshot(),
            "in_flight": self.slots.used,
            "overflowed_to_batch": self.overflowed,
            "ready": self.ready(),
            "budgets": self.budgets.last_snapshot,
        }

    def ready(self) -> bool:
        """Whether every interactive consumer has joined its group and owns its partitions."""
        interactive = [lane for lane in self._lanes if lane.lane is Lane.INTERACTIVE]
        return len(interactive) == len(self.models) and all(lane.joined for lane in interactive)

    def room(self, lane: Lane) -> int:
        """How many more messages `lane` may take now (see the module docstring)."""
        free = self.slots.free
        if lane is Lane.INTERACTIVE:
            return free
        if self.budgets.waiting(Lane.INTERACTIVE) > 0:
            return 0
        share = int(self.slots.size * self.worker_settings.batch_slot_share)
        return max(0, min(free, share - self.lane_used[Lane.BATCH]))

    def over_fair_share(self, tenant: str) -> bool:
        """Whether `tenant` already holds its share of this worker's interactive slots
        (`tenant_slot_share` of them, times its weight)."""
        cap = min(self.slots.size, max(1, int(self.tenant_cap * self.weights(tenant))))
        return self.tenant_used[tenant] >= cap

    def track(self, work: Coroutine[Any, Any, None], lane: Lane = Lane.INTERACTIVE,
              tenant: str | None = None) -> None:
        """Run `work` as a task that holds one slot (of `lane`, of `tenant`) until it ends.

        Only interactive slots count towards a tenant's share.
        """
        counted = tenant if lane is Lane.INTERACTIVE else None
        self.slots.used += 1
        self.lane_used[lane] += 1
        if counted is not None:
            self.tenant_used[counted] += 1
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._task_done(done, lane, counted))

    def _task_done(self, task: asyncio.Task[None], lane: Lane, tenant: str | None) -> None:
        self._tasks.discard(task)
        self.lane_used[lane] -= 1
        if tenant is not None:
            self.tenant_used[tenant] -= 1
            if not self.tenant_used[tenant]:
                del self.tenant_used[tenant]
        self.slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("request task failed", exc_info=task.exception())

    async def publish(self, outcome: Outcome, reply_to: str | None, record: Record) -> None:
        """Send a retry, or usage + result of record + the caller's reply; wait for acks."""
        request_id = outcome.result.request_id if outcome.result else None
        if request_id in self._stream_partitions:
            # After its chunks, on their partition, so the reader sees it last.
            partition = self._stream_partitions.pop(request_id)
        else:
            partition = await self._reply_partition(reply_to)
        await publish_outcome(self.producer, self.topics, outcome, record, reply_to, partition)

    async def emit_chunk(self, request: InferenceRequest, sequence: int,
                         chunk: dict[str, Any]) -> None:
        """Send chunk `sequence` of a streamed answer to the waiting ingress, in order.

        Not awaited to its acknowledgement (that would cost a round trip per chunk): chunks
        and the final result go to one partition of one producer, which Kafka keeps in
        order, and a lost chunk shows to the reader as a gap before the result.
        """
        reply_to = request.reply_to
        if reply_to is None:
            return  # nobody reads this stream (a Kafka-native producer): the result will do
        if sequence == 0:
            self._stream_partitions[request.id] = await self._reply_partition(reply_to)
        correlation = (request.correlation_id or request.id).encode()
        message = StreamChunk(request_id=request.id, correlation_id=request.correlation_id,
                              sequence=sequence, chunk=chunk)
        try:
            delivery = await self.producer.send(
                reply_to, encode(message), key=correlation,
                partition=self._stream_partitions.get(request.id),
                headers=[("correlation_id", correlation), ("kind", CHUNK_KIND.encode())])
        except KafkaError as exc:
            log.warning("chunk %d of %s not sent (%s); the client sees the stream break",
                        sequence, request.id, exc)
            return
        delivery.add_done_callback(_report_lost_chunk)

    async def _reply_partition(self, reply_to: str | None) -> int | None:
        if reply_to is not None and self.reply_partitions is not None:
            return await self.reply_partitions.pick(reply_to)
        return None

    async def publish_with_retry(self, send: Callable[[], Awaitable[None]]) -> None:
        """Retry a publish while Kafka is unavailable; give up only when stopping.

        A record over the brokers' size limit is never retried: the error is raised at once.
        """
        delay = 0.1
        while True:
            try:
                await send()
                return
            except KafkaError as exc:
                if self._stop.is_set() or is_too_large(exc):
                    raise
                log.warning("publish failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; then finish in-flight requests and commit."""
        topic_names = [self.topics.requests(model, lane)
                       for model in self.models for lane in Lane]
        background = Background(  # retries, cancels, status endpoint
            self.kafka, self.producer, self.topics, self.models, self.processor.cancelled,
            self.worker_settings, pool_state=self.state, ready=self.ready, stop=stop)
        # Cancels first, with their retention (also set on an existing topic).
        await ensure_topics(self.kafka, [self.topics.cancels],
                            configs=background.cancels.topic_configs)
        if self.kafka.cancel_lookback_s < self.config.deadlines.batch_s:
            log.warning("SLUICE_CANCEL_LOOKBACK_S (%.0f s) is shorter than the batch lane's "
                        "deadline (%.0f s): cancels of long-queued requests may be forgotten",
                        self.kafka.cancel_lookback_s, self.config.deadlines.batch_s)
        await ensure_topics(
            self.kafka,
            [*topic_names, self.topics.results, self.topics.usage, self.topics.dead_letter,
             *background.topics],
        )
        self._warm_up()
        await self.producer.start()
        await background.start()
        lanes = []
        for model in self.models:
            for kind in Lane:
                suffix = "" if kind is Lane.INTERACTIVE else ".batch"
                consumer = new_consumer(
                    self.kafka,
                    client_id=f"sluice-worker-{model}{suffix}",
                    group_id=f"{self.kafka.topic_prefix}workers.{model}{suffix}",
                    max_poll_records=500,
                    # Nobody waits on HTTP for a batch line: poll it at the slow pace.
                    background=kind is Lane.BATCH,
                )
                lane = _ModelConsumer(self, model, consumer, kind)
                consumer.subscribe([self.topics.requests(model, kind)],
                                   listener=_CommitOnRevoke(lane))
                await consumer.start()
                lanes.append(lane)
        self._lanes = lanes
        log.info("worker serving %s", ", ".join(self.models))
        reporter = asyncio.create_task(self.budgets.report(
            stop, log_every_s=self.worker_settings.budget_log_interval_s))
        weights = asyncio.create_task(self.weights.run(stop))
        try:
            await asyncio.gather(*(lane.run(stop) for lane in lanes))
        finally:
            stop.set()  # helpers end with the pool, however it ends
            await background.stop()
            # Requests still waiting for budget made no call: give them back to Kafka
            # (uncommitted, so another worker takes them) instead of waiting to drain.
            self.budgets.close()
            await self._drain(lanes)
            await reporter
            await weights

    def _warm_up(self) -> None:
        # Load every token vocabulary before consuming: a first use in the event loop
        # stalls it for seconds (o200k_base), long enough to lose the consumer group and
        # to send calls reserved seconds ago all at once.
        for model in self.models:
            for deployment in self.config.models[model].deployments:
                if deployment in self.budgets.gates:
                    encoding_for_model(self.config.deployments[deployment].model,
                                       self.config.models[model].encoding).count("warm up")

    async def _drain(self, lanes: list[_ModelConsumer]) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._drain_timeout_s)
        self._stop.set()
        for lane in lanes:
            with contextlib.suppress(KafkaError):
                await lane.commit()
            await lane.consumer.stop()
        for task in list(self._tasks):
            task.cancel()
        await self.producer.stop()


def _report_lost_chunk(delivery: asyncio.Future[Any]) -> None:
    if not delivery.cancelled() and delivery.exception() is not None:
        log.warning("a streamed chunk was not delivered: %s", delivery.exception())
