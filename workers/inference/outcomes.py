"""Publishing what one delivery produced: a retry, or usage + result + reply (+ dead letter).

Everything is sent and acknowledged before the pool marks the original offset finished, so
a crash in between redelivers the request instead of losing it; ids make the repeats
harmless (usage event ids, results of record, the ledger's first-final-wins rule).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from broker import metrics
from broker.kafka import (
    ConsumerRecord,
    Producer,
    UnknownTopicOrPartitionError,
    encode,
    result_headers,
    send_to_dead_letter,
)
from broker.telemetry.tracing import kafka_trace_headers
from schemas import ErrorInfo, InferenceRequest, InferenceResult, RequestStatus, Topics
from workers.inference.processor import Outcome
from workers.inference.retries import schedule_retry

log = logging.getLogger("sluice.worker")


def too_large_to_publish(outcome: Outcome, request: InferenceRequest, limit: int) -> Outcome:
    """What to publish instead of an outcome over the brokers' size limit.

    A provider's answer too large for Kafka ends the request `failed` with code
    `result_too_large`; its usage events stay as they are, so the call is billed once.
    Sending the same bytes again could never succeed, so nothing is retried.
    """
    if outcome.result is not None:
        size = len(encode(outcome.result))
        base = outcome.result
    else:  # a retry that grew past the limit: the request ends here instead
        size = len(encode(request))
        base = InferenceResult(
            request_id=request.id, model=request.model, status=RequestStatus.FAILED,
            tenant=request.tenant, api_key_id=request.api_key_id,
            attempts=request.attempt, correlation_id=request.correlation_id,
            created_at=request.created_at, finished_at=datetime.now(UTC),
            webhook_url=request.webhook_url)
    error = ErrorInfo(
        type="upstream_error", code="result_too_large",
        message=f"The answer is {size} bytes, over the Kafka brokers' limit of {limit} bytes "
                "(message.max.bytes), so it cannot be delivered. Ask for a shorter answer "
                "(max_tokens), or raise message.max.bytes on the brokers.")
    result = base.model_copy(update={"status": RequestStatus.FAILED, "completion": None,
                                     "error": error, "finished_at": datetime.now(UTC)})
    return Outcome(result, usage=outcome.usage)


async def publish_outcome(
    producer: Producer,
    topics: Topics,
    outcome: Outcome,
    record: ConsumerRecord[bytes, bytes],
    reply_to: str | None,
    reply_partition: int | None = None,
) -> None:
    """Send `outcome` and wait for every acknowledgement.

    A retry goes to the model's retry topic and nothing else: the caller waiting on a reply
    keeps waiting. A final result goes with its usage events to the results and usage
    topics and to the caller's reply topic (`reply_partition` of it, else by key); an
    exhausted request is also dead-lettered, with its original bytes and the reason.
    """
    if outcome.retry is not None:
        await schedule_retry(producer, topics, record, outcome.retry)
        metrics.observe_retry(outcome.retry.request.model)
        return
    result = outcome.result
    assert result is not None, "an outcome is a retry or has a final result"
    payload = encode(result)
    pending = []
    if reply_to:
        # First: the three go out in one produce request, which the broker writes in
        # order, and only the reply has someone waiting on it.
        correlation = (result.correlation_id or result.request_id).encode()
        try:
            pending.append(
                await producer.send(
                    reply_to, payload, key=correlation, partition=reply_partition,
                    headers=[("correlation_id", correlation)],
                )
            )
        except UnknownTopicOrPartitionError:
            # The reply topic is gone (an ingress that shut down, or a Kafka-native caller
            # naming a topic that does not exist where auto-creation is off). The result
            # of record below is what counts; retrying the reply would stall this
            # partition forever. During an outage the results send fails too, and the
            # whole outcome is retried.
            log.warning("reply topic %s does not exist; %s is answered in %s only",
                        reply_to, result.request_id, topics.results)
    pending.append(await producer.send(
        topics.results, payload, key=result.request_id.encode(),
        headers=result_headers(result.tenant, result.webhook_url is not None),
    ))
    pending.extend([
        await producer.send(topics.usage, encode(usage), key=usage.tenant.encode(),
                            headers=kafka_trace_headers())  # the ledger joins the trace
        for usage in outcome.usage
    ])
    await asyncio.gather(*pending)
    if outcome.dead_letter_reason is not None:
        await send_to_dead_letter(producer, topics, record, outcome.dead_letter_reason)
        metrics.observe_dead_letter("worker", "retries_exhausted")
