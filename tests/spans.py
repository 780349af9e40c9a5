"""Recording the spans a test makes: an in-memory exporter on our tracer, then none again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.telemetry import tracing


@contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Spans made in the block land in the exporter yielded (ended ones, in end order)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


def named(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> ReadableSpan:
    """The one span called `name`."""
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, [span.name for span in spans])
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    """The span id of `span`'s parent, or None for a root."""
    return span.parent.span_id if span.parent is not None else None
