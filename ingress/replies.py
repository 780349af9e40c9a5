"""Reply correlation for callers waiting on HTTP.

FastStream's `broker.request()` does not work on real Kafka (DESIGN.md), so each ingress
instance reads its own reply topic and resolves a map of correlation id -> future. The
consumer has no group: it reads every partition of its topic from the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broker.errors import PoisonMessage, SluiceError
from broker.kafka import (
    Consumer,
    ConsumerRecord,
    KafkaError,
    TopicPartition,
    decode,
    delete_topics,
    ensure_topics,
    header,
    new_consumer,
    partition_ids,
    topics_for,
)
from broker.kafka.fetch_pacing import pacing_for
from broker.settings import KafkaSettings
from schemas import InferenceResult, StreamChunk
from schemas.streaming import CHUNK_KIND

log = logging.getLogger("sluice.ingress")


class ReplyListener:
    """Delivers results arriving on this instance's reply topic to their waiters.

    Args:
        kafka: how to reach Kafka.
        ingress_id: names the reply topic.
        temporary: delete the topic on a clean stop. An instance with a random id (no
            `SLUICE_INGRESS_ID`) would otherwise leave one topic behind per start; one
            with a stable id reuses its topic after a restart and keeps it.
    """

    def __init__(self, kafka: KafkaSettings, ingress_id: str, *, temporary: bool = False):
        self._kafka = kafka
        self._temporary = temporary
        self.topic = topics_for(kafka).replies(ingress_id)
        self._waiters: dict[str, asyncio.Future[InferenceResult]] = {}
        self._streams: dict[str, asyncio.Queue[StreamChunk | InferenceResult]] = {}
        self._consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start reading; if Kafka is away, keep trying in the background."""
        self._task = asyncio.create_task(self._run())

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the listener reads its topic (tests and startup use this)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._consumer is None:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def expect(self, correlation_id: str) -> asyncio.Future[InferenceResult]:
        """A future resolved when the result for `correlation_id` arrives."""
        future: asyncio.Future[InferenceResult] = asyncio.get_running_loop().create_future()
        self._waiters[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> None:
        """Stop waiting (timeout or failed publish); a late reply is then ignored."""
        self._waiters.pop(correlation_id, None)

    def expect_stream(self, correlation_id: str) -> asyncio.Queue[StreamChunk | InferenceResult]:
        """A queue receiving a streamed answer's chunks, then its final result."""
        queue: asyncio.Queue[StreamChunk | InferenceResult] = asyncio.Queue()
        self._streams[correlation_id] = queue
        return queue

    def forget_stream(self, correlation_id: str) -> None:
        """Stop listening for a stream (its client left, or it ended)."""
        self._streams.pop(correlation_id, None)

    async def _connect(self) -> Consumer:
        delay = 0.5
        while True:
            consumer = new_consumer(self._kafka, client_id="sluice-ingress-replies", group_id=None)
            try:
                await ensure_topics(self._kafka, [self.topic],
                                    partitions=self._kafka.reply_topic_partitions)
                await consumer.start()
                partitions = await partition_ids(self._kafka, self.topic)
                assigned = [TopicPartition(self.topic, p) for p in partitions]
                consumer.assign(assigned)
                await consumer.seek_to_end(*assigned)
                for tp in assigned:  # resolve positions now, before any request is sent
                    await consumer.position(tp)
                return consumer
            except BaseException as exc:
                # Stop the half-started consumer whatever happened, cancellation included,
                # or its connection outlives us.
                with contextlib.suppress(Exception):
                    await asyncio.shield(consumer.stop())
                if not isinstance(exc, Exception):
                    raise
                log.warning("reply listener cannot start (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _run(self) -> None:
        self._consumer = consumer = await self._connect()
        pacing = pacing_for(consumer, self._kafka)
        while True:
            try:
                # Short polls: two empty ones in a row with replies waiting are how a starved
                # listener notices (see broker/kafka/fetch_pacing.py); waiters pay for each one.
                batch = await consumer.getmany(timeout_ms=100)
            except KafkaError as exc:
                log.warning("reply listener fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if pacing is not None:
                await pacing.observe_poll(batch)
            for records in batch.values():
                for record in records:
                    correlation_id = header(record, "correlation_id") or (
                        record.key.decode() if record.key else ""
                    )
                    stream = self._streams.get(correlation_id)
                    if stream is not None:
                        self._to_stream(stream, correlation_id, record)
                        continue
                    if header(record, "kind") == CHUNK_KIND:
                        continue  # a chunk of a stream whose client has gone
                    waiter = self._waiters.pop(correlation_id, None)
                    if waiter is None or waiter.done():
                        continue
                    try:
                        waiter.set_result(decode(InferenceResult, record))
                    except PoisonMessage as exc:
                        waiter.set_exception(exc)

    def _to_stream(self, stream: asyncio.Queue[StreamChunk | InferenceResult],
                   correlation_id: str, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            if header(record, "kind") == CHUNK_KIND:
                stream.put_nowait(decode(StreamChunk, record))
            else:
                stream.put_nowait(decode(InferenceResult, record))
                self._streams.pop(correlation_id, None)
        except PoisonMessage as exc:
            log.warning("undecodable reply for stream %s: %s", correlation_id, exc)

    async def stop(self) -> None:
        """Stop reading and fail nobody: waiters time out into 504 with a status URL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._temporary:
            try:
                await delete_topics(self._kafka, [self.topic])
            except (SluiceError, KafkaError) as exc:
                log.warning("could not delete reply topic %s (%s); delete it by hand",
                            self.topic, exc)
