"""Publishing requests: an answer of 200/202 only after Kafka acknowledged (acks=all)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broker.errors import BrokerUnavailable, MessageTooLarge
from broker.kafka import (
    KafkaError,
    Producer,
    encode,
    is_too_large,
    message_limit,
    new_producer,
    topics_for,
)
from broker.settings import KafkaSettings
from broker.signing import service_headers
from broker.telemetry.tracing import producer_span
from schemas import InferenceRequest
from schemas.messages import CancelRequested

log = logging.getLogger("sluice.ingress")


class RequestPublisher:
    """Owns the ingress producer; keeps trying to connect while Kafka is away."""

    def __init__(self, kafka: KafkaSettings):
        self._kafka = kafka
        self._topics = topics_for(kafka)
        self._producer: Producer | None = None
        self._connector: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Whether the producer is connected."""
        return self._producer is not None

    async def start(self) -> None:
        """Connect now if Kafka answers; otherwise keep trying in the background."""
        if not await self._try_connect():
            self._connector = asyncio.create_task(self._keep_connecting())

    async def _try_connect(self) -> bool:
        producer = new_producer(self._kafka, client_id="sluice-ingress")
        try:
            await producer.start()
        except KafkaError as exc:
            log.warning("Kafka at %s unreachable (%s); answering 503 meanwhile",
                        self._kafka.kafka_bootstrap, exc)
            await producer.stop()
            return False
        self._producer = producer
        return True

    async def _keep_connecting(self) -> None:
        delay = 0.5
        while not await self._try_connect():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def publish(self, request: InferenceRequest) -> None:
        """Send `request` to its model's topic and wait for the acknowledgement.

        In a producer span; the record carries its trace context (`traceparent`).

        Raises:
            BrokerUnavailable: Kafka did not acknowledge; trying again later may work.
            MessageTooLarge: the request is over the brokers' size limit; it never will.
        """
        if self._producer is None:
            raise BrokerUnavailable(f"Kafka at {self._kafka.kafka_bootstrap} is unreachable.")
        headers = [("correlation_id", (request.correlation_id or request.id).encode())]
        if request.reply_to:
            headers.append(("reply_to", request.reply_to.encode()))
        payload = encode(request)
        # Signed: workers serve only requests that prove who sent them (broker/signing.py).
        headers.extend(service_headers(self._kafka, payload))
        topic = self._topics.requests(request.model, request.lane)
        try:
            with producer_span(topic, {"sluice.request_id": request.id}) as trace_headers:
                await self._producer.send_and_wait(
                    topic, payload, key=request.id.encode(), headers=[*headers, *trace_headers],
                )
        except KafkaError as exc:
            if is_too_large(exc):
                raise MessageTooLarge(len(payload), message_limit(self._kafka)) from exc
            raise BrokerUnavailable(f"Kafka did not acknowledge the request ({exc}).") from exc

    async def publish_cancel(self, marker: CancelRequested) -> None:
        """Send a cancellation marker (keyed by request id) and wait for the acknowledgement."""
        if self._producer is None:
            raise BrokerUnavailable(f"Kafka at {self._kafka.kafka_bootstrap} is unreachable.")
        try:
            await self._producer.send_and_wait(
                self._topics.cancels, encode(marker), key=marker.request_id.encode()
            )
        except KafkaError as exc:
            raise BrokerUnavailable(f"Kafka did not acknowledge the cancel ({exc}).") from exc

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
