"""The batch tracker service: a results consumer and a maintenance loop, in one process.

It runs inside `sluice ledger` (no extra process to deploy). Its consumer group
(`<prefix>batches`) reads `<prefix>results` independently of the ledger's. Lines of models
whose first deployment has `batch: native` go to that provider's batch API through the
native lane (`workers.batches.native`), which the maintenance loop drives too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from broker.batches.files import FileStore
from broker.batches.settings import BatchSettings
from broker.config import SluiceConfig
from broker.estimates import Estimator
from broker.kafka import (
    TRANSIENT_ERRORS,
    ApplyLoop,
    KafkaError,
    Record,
    cancels_topic_configs,
    ensure_topics,
    new_producer,
    topics_for,
)
from broker.settings import KafkaSettings
from workers.batches.claims import candidates, claim
from workers.batches.finalizer import Finalizer
from workers.batches.launcher import Launcher, NativeScreening
from workers.batches.native import BatchUpstream, NativeLane, native_routes
from workers.batches.results import record_results

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("sluice.batches")



class BatchTracker:
    """Launches, follows and finalizes batches until stopped.

    Args:
        kafka: where to publish lines and cancellations and read results.
        settings: file storage, limits and the maintenance interval.
        engine: the ledger database (migrated).
        config: the models and deployments, so a batch's hold is estimated as admission
            estimates a request (`broker.estimates`), and lines naming an alias are
            served by its model with their A/B or canary variant (`workers.batches.routing`);
            None falls back to the price catalog and default output allowance, and lines
            are published under the name they give.
        upstreams: the batch API client of each `batch: native` deployment
            (`workers.batches.native.native_upstreams`); a native deployment without one
            is served by the queue lane.
    """

    def __init__(self, kafka: KafkaSettings, settings: BatchSettings, engine: AsyncEngine,
                 config: SluiceConfig | None = None,
                 upstreams: Mapping[str, BatchUpstream] | None = None):
        self._kafka = kafka
        self._routes = native_routes(config, upstreams or {})
        self._config = config
        self._estimator = Estimator(config)
        self._settings = settings
        self._engine = engine
        self._topics = topics_for(kafka)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume results and tick the maintenance loop until `stop` is set."""
        await ensure_topics(self._kafka, [self._topics.cancels],
                            configs=cancels_topic_configs(self._kafka))
        await ensure_topics(self._kafka, [self._topics.results, self._topics.usage])
        producer = new_producer(self._kafka, client_id="sluice-batches", linger_ms=5)
        # Each batch line's answer, from the results: written, then committed.
        answers = ApplyLoop(self._kafka, name="batches", apply=self._apply,
                            group_id=f"{self._kafka.topic_prefix}batches",
                            topics=[self._topics.results],
                            batch_size=2000)
        await producer.start()
        try:
            files = FileStore(self._engine, self._settings)
            lane = NativeLane(self._engine, self._routes, self._settings, producer,
                              self._kafka, self._topics)
            launcher = Launcher(self._engine, files, producer, self._kafka, self._estimator,
                                lane, NativeScreening(self._config), config=self._config)
            finalizer = Finalizer(self._engine, files, producer, self._topics, self._settings)
            # The native lane has a loop of its own: an upload or download of hundreds of
            # megabytes must not hold up launching and finishing other batches.
            await asyncio.gather(answers.run(stop), self._maintain(launcher, finalizer, stop),
                                 self._follow_native(lane, stop))
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await producer.stop()

    async def _apply(self, records: list[Record]) -> None:
        await record_results(self._engine, records)

    async def _maintain(self, launcher: Launcher, finalizer: Finalizer,
                        stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                for batch in await candidates(self._engine, "validating"):
                    claimed = await claim(self._engine, batch.id)
                    if claimed is not None:
                        await launcher.launch(claimed)
                await finalizer.tick()
            except TRANSIENT_ERRORS as exc:
                log.warning("batches: maintenance failed (%s); trying again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.batch_poll_interval_s)

    async def _follow_native(self, lane: NativeLane, stop: asyncio.Event) -> None:
        if not self._routes:
            return
        while not stop.is_set():
            try:
                await lane.tick()
            except TRANSIENT_ERRORS as exc:
                log.warning("batches: native lane failed (%s); trying again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.batch_poll_interval_s)
