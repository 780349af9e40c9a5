"""publish_outcome: what a final result sends, in which order, and that it waits for acks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import UnknownTopicOrPartitionError

from schemas import InferenceResult, RequestStatus, Topics, UsageEvent
from workers.inference.outcomes import publish_outcome
from workers.inference.processor import Outcome

NOW = datetime(2026, 1, 2, tzinfo=UTC)


class RecordingProducer:
    """Records each send; acknowledges only when the test says so."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.acks: list[asyncio.Future[None]] = []

    async def send(self, topic: str, value: bytes, **options: Any) -> asyncio.Future[None]:
        self.sent.append((topic, options))
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]


def _outcome() -> Outcome:
    result = InferenceResult(request_id="req_1", model="m", status=RequestStatus.SUCCEEDED,
                             tenant="acme", correlation_id="corr_1", created_at=NOW,
                             finished_at=NOW)
    usage = UsageEvent(event_id="use_1", request_id="req_1", tenant="acme", model="m",
                       deployment="d", provider="openai", input_tokens=1, output_tokens=2,
                       latency_ms=1.0, status="succeeded", started_at=NOW, finished_at=NOW)
    return Outcome(result, [usage])


async def _publish(producer: RecordingProducer, reply_to: str | None) -> asyncio.Task[None]:
    record = cast(ConsumerRecord[bytes, bytes], None)  # only retries and dead letters read it
    task = asyncio.create_task(publish_outcome(
        cast(AIOKafkaProducer, producer), Topics("p."), _outcome(), record, reply_to, 3))
    await asyncio.sleep(0)
    return task


async def test_the_reply_goes_first_and_all_acks_are_awaited() -> None:
    producer = RecordingProducer()
    task = await _publish(producer, "p.replies.ingress-1")
    assert [topic for topic, _ in producer.sent] == ["p.replies.ingress-1", "p.results", "p.usage"]
    reply_options = producer.sent[0][1]
    assert reply_options["partition"] == 3 and reply_options["key"] == b"corr_1"
    for ack in producer.acks[:-1]:
        ack.set_result(None)
    await asyncio.sleep(0)
    assert not task.done()  # the usage event is not acknowledged yet
    producer.acks[-1].set_result(None)
    await task


async def test_without_a_reply_topic_only_results_and_usage_go_out() -> None:
    producer = RecordingProducer()
    task = await _publish(producer, None)
    assert [topic for topic, _ in producer.sent] == ["p.results", "p.usage"]
    for ack in producer.acks:
        ack.set_result(None)
    await task


class NoSuchReplyTopic(RecordingProducer):
    """Kafka has no topic of the caller's reply_to (and will not auto-create it)."""

    async def send(self, topic: str, value: bytes, **options: Any) -> asyncio.Future[None]:
        if topic == "gone.replies":
            raise UnknownTopicOrPartitionError()
        future = await super().send(topic, value, **options)
        future.set_result(None)
        return future


async def test_a_missing_reply_topic_is_skipped_and_the_result_of_record_still_sent() -> None:
    producer = NoSuchReplyTopic()
    task = await _publish(producer, "gone.replies")
    await task  # no error, no retry loop: the result and usage were acknowledged
    assert [topic for topic, _ in producer.sent] == ["p.results", "p.usage"]
