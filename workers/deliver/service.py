"""The deliverer: final results (Kafka) → deliveries (PostgreSQL) → signed HTTP attempts.

Three loops share one event loop:
- consume (`broker.kafka.ApplyLoop`): per poll, decode results and insert their
  deliveries in one transaction, then commit the offsets (a crash before the commit
  re-reads the results; the deterministic delivery ids make that a no-op);
- dispatch: run due attempts, at most `deliver_concurrency` at once, so a slow or failing
  receiver delays only its own deliveries;
- sweep: load due deliveries from PostgreSQL (after a restart, when the in-memory schedule
  was full, or after a redeliver request from ingress).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from broker import metrics
from broker.errors import PoisonMessage
from broker.kafka import (
    RESULT_TENANT_HEADER,
    RESULT_WEBHOOK_HEADER,
    TRANSIENT_ERRORS,
    ApplyLoop,
    Record,
    decode,
    ensure_topics,
    header,
    topics_for,
)
from broker.settings import KafkaSettings
from broker.webhooks.settings import WebhookSettings
from broker.webhooks.signing import webhook_headers
from schemas import InferenceResult
from workers.deliver.policy import AttemptOutcome, Verdict, retry_delay_s, verdict
from workers.deliver.schedule import Schedule
from workers.deliver.sender import WebhookSender
from workers.deliver.store import Claimed, DeliveryStore

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)



class Deliverer:
    """Delivers every final result to its webhook URL and the tenant's endpoints.

    Args:
        kafka: where to read results (topic prefix included).
        settings: retry schedule, concurrency, allowlist.
        engine: the PostgreSQL engine (migrated).
        sender: sends one attempt under the SSRF policy.
        rng: jitter source (seeded in tests).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: WebhookSettings,
        engine: AsyncEngine,
        sender: WebhookSender,
        *,
        client_id: str = "sluice-deliver",
        rng: random.Random | None = None,
    ) -> None:
        self._kafka = kafka
        self._settings = settings
        self._sender = sender
        self._client_id = client_id
        self._rng = rng or random.Random()
        self.store = DeliveryStore(engine, max_attempts=settings.webhook_max_attempts,
                                   lease_s=settings.deliver_lease_s)
        self.schedule = Schedule(settings.deliver_max_scheduled)
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def group_id(self) -> str:
        """The consumer group, one per topic prefix."""
        return f"{self._kafka.topic_prefix}deliver"

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; attempts under way get `webhook_timeout_s` to end.

        Raises:
            BrokerUnavailable: Kafka cannot be reached at start.
        """
        results_topic = topics_for(self._kafka).results
        await ensure_topics(self._kafka, [results_topic])
        # Each final result worth a delivery becomes a row, then its offset is committed.
        intake = ApplyLoop(self._kafka, name="deliver", group_id=self.group_id,
                           apply=self._apply, topics=[results_topic],
                           client_id=self._client_id)
        loops = [asyncio.create_task(self._dispatch(stop)), asyncio.create_task(self._sweep(stop))]
        try:
            await intake.run(stop)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=self._settings.webhook_timeout_s)
            for task in self._in_flight:
                task.cancel()  # its lease expires; another run retries it

    async def _apply(self, records: list[Record]) -> None:
        results = self._decoded(await self._worth_decoding(records))
        created = await self.store.add_results(results) if results else []
        for delivery in created:
            self.schedule.add(delivery)  # a full schedule leaves it to the sweep

    @staticmethod
    def _decoded(records: list[Record]) -> list[InferenceResult]:
        results = []
        for record in records:
            try:
                results.append(decode(InferenceResult, record))
            except PoisonMessage as exc:
                # The ledger dead-letters poison results; a second copy would only confuse.
                logger.warning("deliver: skipping %s@%d: %s", record.topic, record.offset, exc)
        return results

    async def _worth_decoding(self, records: list[Record]) -> list[Record]:
        """The results that may call for a delivery, judged by their headers alone.

        Workers label each result with its tenant and whether it names a webhook, so the
        results of tenants without endpoints (most of them) are skipped unparsed. A result
        without the labels (an older worker's) is always decoded.
        """
        labelled = [(record, header(record, RESULT_TENANT_HEADER)) for record in records]
        tenants = {tenant for _, tenant in labelled if tenant is not None}
        interested = await self.store.tenants_with_endpoints(tenants)
        return [record for record, tenant in labelled
                if tenant is None or tenant in interested
                or header(record, RESULT_WEBHOOK_HEADER) is not None]

    async def _dispatch(self, stop: asyncio.Event) -> None:
        wake = self.schedule.changed
        while not stop.is_set():
            wake.clear()
            free = self._settings.deliver_concurrency - len(self._in_flight)
            for delivery in self.schedule.pop_due(max(0, free)):
                task = asyncio.create_task(self.attempt(delivery))
                self._in_flight.add(task)
                task.add_done_callback(self._finished)
            wait = self.schedule.wait_s() if free > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(wait if wait is not None else 1.0, 1.0))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self.schedule.changed.set()  # a slot is free

    async def _sweep(self, stop: asyncio.Event) -> None:
        interval = self._settings.deliver_sweep_interval_s
        while not stop.is_set():
            if self.schedule.room:
                try:
                    for delivery, wait_s in await self.store.due(self.schedule.room, interval):
                        self.schedule.add(delivery, wait_s)
                except TRANSIENT_ERRORS as exc:
                    logger.warning("deliver: sweep failed (%s); trying again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def attempt(self, delivery: str) -> None:
        """Claim `delivery`, send one attempt, record it and schedule the next if any."""
        try:
            claimed = await self.store.claim(delivery)
        except TRANSIENT_ERRORS as exc:
            logger.warning("deliver: cannot claim %s (%s); the sweep retries", delivery, exc)
            return
        if claimed is None:
            return  # done, not due, or another deliverer holds it
        started = datetime.now(UTC)
        outcome = await self._send(claimed)
        decided = verdict(outcome, claimed.attempt, claimed.attempt_limit)
        metrics.observe_webhook_attempt(decided.value, outcome.status_code,
                                        refused=outcome.refused)
        delay = 0.0
        if decided is Verdict.RETRY:
            delay = retry_delay_s(outcome, claimed.attempt, self._settings, self._rng)
        try:
            await self.store.finish(claimed, outcome, decided, delay, started)
        except TRANSIENT_ERRORS as exc:
            # The lease runs out and the attempt is made again: at least once, and the
            # receiver deduplicates on `webhook-id`.
            logger.warning("deliver: attempt %d of %s not recorded (%s)",
                           claimed.attempt, claimed.id, exc)
            return
        if decided is Verdict.RETRY:
            self.schedule.add(claimed.id, delay)

    async def _send(self, claimed: Claimed) -> AttemptOutcome:
        if claimed.disabled_reason is not None:
            return AttemptOutcome(error=f"not sent: URL disabled ({claimed.disabled_reason})",
                                  refused=True)
        if not claimed.secrets:
            return AttemptOutcome(error="not sent: the tenant has no active webhook secret",
                                  refused=True)
        body = claimed.payload.encode()
        headers = webhook_headers(claimed.secrets, claimed.id, int(time.time()), body)
        return await self._sender.send(claimed.url, headers, body)
