"""The process's tracer and W3C trace context across Kafka and HTTP.

One trace follows a request over every hop: ingress (a server span per call, a producer
span per publish) → the request record → the worker (a consumer span, a client span per
provider call) → the result and usage records → the ledger. The hops are joined by the W3C
`traceparent` and `tracestate` headers, on Kafka records as record headers (the names and
values a browser or HTTP client would send, as bytes) and on provider calls as HTTP
headers.

Until the composition root installs an SDK provider (`install`), `tracer()` is
OpenTelemetry's no-op tracer and the span helpers below skip span work altogether: no SDK,
no cost beyond passing a caller's `traceparent` along unchanged (what W3C asks of
intermediaries). Our own module-level tracer, rather than OpenTelemetry's global one, lets
a test install an in-memory exporter and take it away again; the global provider can be
set once per process only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_HEADERS = (TRACEPARENT, TRACESTATE)
INSTRUMENTATION_NAME = "sluicegate"

Attributes = Mapping[str, AttributeValue]
KafkaHeaders = Iterable[tuple[str, bytes | None]]

# W3C Trace Context only: the format every collector, proxy and provider understands.
_propagator = TraceContextTextMapPropagator()


class _Installed:
    """The provider spans go to, if any (one per process; tests swap it)."""

    provider: trace.TracerProvider | None = None
    tracer: Tracer = NoOpTracer()


_installed = _Installed()


def install(provider: trace.TracerProvider) -> None:
    """Send this process's spans to `provider` (an SDK `TracerProvider`)."""
    _installed.provider = provider
    _installed.tracer = provider.get_tracer(INSTRUMENTATION_NAME)


def uninstall() -> None:
    """Back to the no-op tracer (tests)."""
    _installed.provider = None
    _installed.tracer = NoOpTracer()


def enabled() -> bool:
    """Whether spans are recorded at all; callers skip span-only work when not."""
    return _installed.provider is not None


def tracer() -> Tracer:
    """The process's tracer (the no-op tracer until `install`)."""
    return _installed.tracer


def http_trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for an outgoing HTTP call."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


def kafka_trace_headers() -> list[tuple[str, bytes]]:
    """The current span's trace context as Kafka record headers (none without a span)."""
    return [(name, value.encode("latin-1")) for name, value in http_trace_headers().items()]


def context_from_kafka(headers: KafkaHeaders | None) -> Context | None:
    """The trace context a record carries in its headers, or None."""
    carrier: dict[str, str] = {}
    for name, value in headers or ():
        if name in TRACE_HEADERS and value is not None:
            carrier.setdefault(name, bytes(value).decode("latin-1"))
    return context_from(carrier)


def context_from(carrier: Mapping[str, str]) -> Context | None:
    """The trace context in `carrier` (HTTP headers, decoded record headers), or None."""
    if carrier.get(TRACEPARENT) is None:
        return None
    parent = _propagator.extract(carrier)
    return parent if trace.get_current_span(parent).get_span_context().is_valid else None


@contextmanager
def continued(parent: Context | None) -> Iterator[None]:
    """Run the block in `parent`'s trace (no span of its own): what passes a caller's
    trace context on when nothing is recorded."""
    if parent is None:
        yield
        return
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def server_span(name: str, headers: Mapping[str, str],
                attributes: Attributes | None = None) -> Iterator[Span]:
    """A span for one HTTP call we serve, a child of the caller's span if it sent one."""
    parent = context_from(headers) if TRACEPARENT in headers else None
    if not enabled():
        with continued(parent):
            yield INVALID_SPAN
        return
    with tracer().start_as_current_span(name, context=parent, kind=SpanKind.SERVER,
                                        attributes=attributes) as span:
        yield span


def _messaging(topic: str, operation: str) -> dict[str, AttributeValue]:
    return {"messaging.system": "kafka", "messaging.destination.name": topic,
            "messaging.operation.type": operation}


@contextmanager
def producer_span(topic: str, attributes: Attributes | None = None,
                  ) -> Iterator[list[tuple[str, bytes]]]:
    """A span for publishing one record to `topic`; yields the headers that carry it."""
    if not enabled():
        yield kafka_trace_headers()
        return
    with tracer().start_as_current_span(
            f"publish {topic}", kind=SpanKind.PRODUCER,
            attributes={**_messaging(topic, "send"), **(attributes or {})}):
        yield kafka_trace_headers()


@contextmanager
def consumer_span(topic: str, headers: KafkaHeaders | None,
                  attributes: Attributes | None = None) -> Iterator[Span]:
    """A span for processing one record of `topic`, in the trace its headers carry."""
    parent = context_from_kafka(headers)
    if not enabled():
        with continued(parent):
            yield INVALID_SPAN
        return
    with tracer().start_as_current_span(
            f"process {topic}", context=parent, kind=SpanKind.CONSUMER,
            attributes={**_messaging(topic, "process"), **(attributes or {})}) as span:
        yield span
