"""Cancellation markers: which requests clients asked to cancel, as this worker knows them.

Ingress publishes a `CancelRequested` to `<prefix>cancels` (key: the request id). Every
worker reads the whole topic without a consumer group, so each sees every marker, and
keeps the most recent ones in a bounded set. The processor answers a request in that set
`cancelled` instead of calling a provider; a request already in a provider call finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from broker.errors import PoisonMessage
from broker.kafka import (
    KafkaError,
    decode,
    new_consumer,
)
from broker.settings import KafkaSettings
from schemas import Topics
from schemas.messages import CancelRequested

log = logging.getLogger("sluice.worker.cancels")


class CancelledIds:
    """The last `max_entries` cancelled request ids, with their tenant (oldest forgotten)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._max_entries = max_entries

    def add(self, request_id: str, tenant: str) -> None:
        """Remember a cancellation."""
        self._entries[request_id] = tenant
        self._entries.move_to_end(request_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def is_cancelled(self, request_id: str, tenant: str) -> bool:
        """Whether `tenant` cancelled `request_id` (another tenant's marker counts for nothing)."""
        return self._entries.get(request_id) == tenant

    def __len__(self) -> int:
        return len(self._entries)


class CancelListener:
    """Feeds a `CancelledIds` from the cancels topic until stopped."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, cancelled: CancelledIds) -> None:
        self._kafka = kafka
        self._topics = topics
        self.cancelled = cancelled
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Read markers from the beginning of the topic (no group: every worker sees all)."""
        consumer = new_consumer(
            self._kafka, client_id="sluice-worker-cancels", group_id=None, background=True
        )
        consumer.subscribe([self._topics.cancels])
        await consumer.start()
        try:
            while not stop.is_set():
                try:
                    batch = await consumer.getmany(timeout_ms=100)
                except KafkaError as exc:  # a broker hiccup must not end cancellations
                    log.warning("reading cancels failed: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                for records in batch.values():
                    for record in records:
                        with contextlib.suppress(PoisonMessage):
                            marker = decode(CancelRequested, record)
                            self.cancelled.add(marker.request_id, marker.tenant)
                if consumer.assignment():
                    self.ready.set()
        finally:
            await consumer.stop()
