"""The inference pool: one consumer group per model topic and lane, many requests in flight.

Each model's topic of each lane is read by a `ModelConsumer` (`workers.inference.consumer`:
fetching, dispatching, committing). Each polled message becomes a task of the pool; a
process-wide bound caps how many run at once. When
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
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from broker.budgets import BudgetStore, MemoryBudgetStore
from broker.config import SluiceConfig
from broker.kafka import (
    KafkaError,
    Producer,
    Record,
    encode,
    ensure_topics,
    is_too_large,
    new_consumer,
    new_producer,
    topics_for,
)
from broker.settings import KafkaSettings, WorkerSettings
from broker.tokens import encoding_for_model
from schemas import InferenceRequest, Lane, StreamChunk
from schemas.streaming import CHUNK_KIND
from workers.inference.background import Background
from workers.inference.consumer import CommitOnRevoke, ModelConsumer
from workers.inference.lanes import BudgetGates
from workers.inference.ledger_catch_up import catch_up_for
from workers.inference.metered import metered
from workers.inference.native_admission import NativeAdmission
from workers.inference.outcomes import publish_outcome
from workers.inference.processor import Outcome, RequestProcessor
from workers.inference.provenance import RequestProvenance
from workers.inference.reply_partitions import StickyReplyPartitions
from workers.inference.results import FinalResults
from workers.inference.tenant_weights import TenantWeights
from workers.providers import Provider

log = logging.getLogger("sluice.worker")


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
        # Every provider call measured (`workers.inference.metered`).
        self.processor = RequestProcessor(config, metered(providers, config),
                                          budgets=self.budgets, emit=self.emit_chunk)
        self.final_results = final_results
        # After a takeover, redelivered requests wait for the ledger (shared by lanes).
        self.catch_up = catch_up_for(kafka, final_results)
        self.slots = _Slots(worker_settings.worker_concurrency)
        self.lane_used = dict.fromkeys(Lane, 0)
        # Fair share: one tenant holds at most this many interactive slots of this worker;
        # the rest of its requests overflow to the batch topic (`ModelConsumer._overflow`).
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
        self._lanes: list[ModelConsumer] = []
        self._drain_timeout_s = drain_timeout_s
        self._stop = asyncio.Event()
        self._background: Background | None = None

    def status(self) -> dict[str, Any]:
        """The worker's `GET /status`: this pool's state, its retries and known cancels."""
        return self._background.snapshot() if self._background else self.state()

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
        background = self._background = Background(  # retries, cancels, status endpoint
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
                    group_id=self.topics.worker_group(model, kind),
                    max_poll_records=500,
                    # Nobody waits on HTTP for a batch line: poll it at the slow pace.
                    background=kind is Lane.BATCH,
                )
                lane = ModelConsumer(self, model, consumer, kind, self.catch_up)
                consumer.subscribe([self.topics.requests(model, kind)],
                                   listener=CommitOnRevoke(lane))
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
            # Requests waiting for the ledger to catch up after a takeover made no call
            # either: they go back too, and the catch-up's clients close with the pool.
            await self.catch_up.close()
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

    async def _drain(self, lanes: list[ModelConsumer]) -> None:
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
