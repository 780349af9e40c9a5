"""The OpenTelemetry SDK provider for a trace mode: OTLP over HTTP, the console, or none.

The SDK is imported only when tracing is on, so a process that traces nothing loads none of
it. The OTLP exporter reads OpenTelemetry's standard variables itself
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `…_HEADERS`, `…_TIMEOUT`, certificates), as every other
OpenTelemetry client does; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the
process and win over the name its command gives.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from broker.telemetry.settings import TraceMode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider


def tracer_provider(mode: TraceMode, service: str,
                    environ: Mapping[str, str]) -> TracerProvider | None:
    """A provider exporting spans as `mode` says (batched, off the event loop), or None."""
    if mode == "off":
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    named = "OTEL_SERVICE_NAME" in environ or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {SERVICE_NAME: service})
    exporter: SpanExporter
    if mode == "console":
        # One line per span: the child processes of `sluice dev` write into log files.
        exporter = ConsoleSpanExporter(out=sys.stdout, formatter=_one_line)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _one_line(span: ReadableSpan) -> str:
    line: str = span.to_json(indent=None)
    return line + "\n"
