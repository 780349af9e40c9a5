"""Cancellation markers: which requests clients asked to cancel, as this worker knows them.

Ingress publishes a `CancelRequested` to `<prefix>cancels` (key: the request id). Every
worker reads the topic without a consumer group, so each sees every marker, and keeps the
most recent ones in a bounded set. The processor answers a request in that set
`cancelled` instead of calling a provider; a request already in a provider call finishes.

A cancel matters only while its request can still run: at most the longest lane deadline
plus retries, which `cancel_lookback_s` (25 h) covers. The topic keeps markers that long
(`topic_configs`), and a worker starts reading each partition at its first marker that
recent instead of at the topic's beginning, so its start time and memory stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

from broker.errors import PoisonMessage
from broker.kafka import (
    Consumer,
    KafkaError,
    TopicPartition,
    decode,
    new_consumer,
)
from broker.kafka.clients import start_at_time
from broker.kafka.topic_configs import cancels_topic_configs
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


def topic_configs(kafka: KafkaSettings) -> dict[str, str]:
    """The cancels topic's configs (`broker.kafka.cancels_topic_configs`)."""
    return cancels_topic_configs(kafka)


class CancelListener:
    """Feeds a `CancelledIds` from the cancels topic until stopped."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, cancelled: CancelledIds) -> None:
        self._kafka = kafka
        self._topics = topics
        self.cancelled = cancelled
        self.ready = asyncio.Event()
        self.topic_configs = topic_configs(kafka)

    def _since_ms(self) -> int:
        return int((time.time() - self._kafka.cancel_lookback_s) * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        """Read the markers of the last `cancel_lookback_s` (no group: every worker sees all)."""
        consumer = new_consumer(
            self._kafka, client_id="sluice-worker-cancels", group_id=None, background=True
        )
        consumer.subscribe([self._topics.cancels])
        await consumer.start()
        started: set[TopicPartition] = set()
        try:
            while not stop.is_set():
                try:
                    # Partitions are assigned as the consumer learns of them, maybe later.
                    fresh = consumer.assignment() - started
                    if fresh:
                        await self._start_recent(consumer, fresh)
                        started |= fresh
                    batch = await consumer.getmany(timeout_ms=100)
                except KafkaError as exc:  # a broker hiccup must not end cancellations
                    log.warning("reading cancels failed: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                since_ms = self._since_ms()
                for records in batch.values():
                    for record in records:
                        # Older markers can still come (read before a partition's start
                        # was set, or on a broker that cannot look up by time): no request
                        # they name can still run, so they would only take up memory.
                        if record.timestamp < since_ms:
                            continue
                        with contextlib.suppress(PoisonMessage):
                            marker = decode(CancelRequested, record)
                            self.cancelled.add(marker.request_id, marker.tenant)
                if consumer.assignment():
                    self.ready.set()
        finally:
            await consumer.stop()

    async def _start_recent(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        if not await start_at_time(consumer, sorted(partitions), self._since_ms()):
            # A broker without ListOffsets by time: read from the beginning (the consumer's
            # offset reset), still keeping only recent markers. Tansu reads from the
            # beginning too, without saying so: it answers the lookup with each
            # partition's first offset.
            log.info("Kafka cannot look up offsets by time; reading %s from its beginning",
                     self._topics.cancels)
