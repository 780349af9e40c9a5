"""The ledger's part of a request's trace.

The ledger writes records in batches of up to thousands, one transaction each, so a batch
gets one `ledger write` span (linked to the traces of the records it holds), and every
record that carries a trace context gets a short `record {topic}` span in its request's
trace once its batch is written, linked back to the batch span: a request's trace ends
where its usage and result became rows. Nothing is extracted or recorded without a tracer.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from broker.kafka.apply_loop import Apply, Record
from broker.telemetry.tracing import context_from_kafka, enabled, tracer

MAX_LINKS = 128
"""Links on one batch span at most (the SDK's default limit)."""


def traced_apply(apply: Apply) -> Apply:
    """`apply` (one ledger batch) in a batch span, with a span per traced record after."""

    async def traced(records: list[Record]) -> None:
        if not enabled():
            await apply(records)
            return
        started_ns = time.time_ns()
        traced_records = [(record, context_from_kafka(record.headers)) for record in records]
        links = [Link(trace.get_current_span(parent).get_span_context())
                 for _, parent in traced_records if parent is not None][:MAX_LINKS]
        with tracer().start_as_current_span(
                "ledger write", links=links,
                attributes={"sluice.ledger.records": len(records)}) as batch:
            await apply(records)
        batch_link = [Link(batch.get_span_context())]
        for record, parent in traced_records:
            if parent is None:
                continue
            span = tracer().start_span(
                f"record {record.topic}", context=parent, kind=SpanKind.CONSUMER,
                links=batch_link, start_time=started_ns, attributes={
                    "messaging.system": "kafka", "messaging.destination.name": record.topic,
                    "messaging.operation.type": "process",
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset})
            span.end()

    return traced
