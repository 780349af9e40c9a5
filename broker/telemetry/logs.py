"""Log lines that say which request they are about: JSON for collectors, text for people.

Where a request is handled (ingress, the worker's task for one record) the handler opens a
`log_scope` and names the request (`annotate(request_id=…, tenant=…, model=…)`); every line
logged inside, by any module, then carries those fields and the current span's `trace_id`
and `span_id`, so a log search and a trace find each other. The fields live in a context
variable: each asyncio task has its own, and a scope's fields end with it.

Why not python-json-logger: the whole formatter is the dict below plus `orjson` (already a
dependency, and several times faster than `json`); the library would add a dependency and
still need the context fields added.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType

import orjson
from opentelemetry import trace

REQUEST_FIELDS = ("request_id", "tenant", "model", "deployment")
"""What a line may say about the request it belongs to, in this order."""

_NO_FIELDS: Mapping[str, str] = MappingProxyType({})
_fields: ContextVar[Mapping[str, str]] = ContextVar("sluice_log_fields", default=_NO_FIELDS)


@contextmanager
def log_scope(**fields: str | None) -> Iterator[None]:
    """Lines logged in the block carry `fields` (and what `annotate` adds); restored after."""
    token = _fields.set({**_fields.get(), **_present(fields)})
    try:
        yield
    finally:
        _fields.reset(token)


def annotate(**fields: str | None) -> None:
    """Add fields to the lines of the current scope (ended with it) or, outside any
    scope, of the current task."""
    _fields.set({**_fields.get(), **_present(fields)})


def current_fields() -> dict[str, str]:
    """The request fields and trace ids a line logged now would carry."""
    fields = dict(_fields.get())
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    return fields


def _present(fields: Mapping[str, str | None]) -> dict[str, str]:
    return {name: value for name, value in fields.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, then the request
    fields and trace ids when known, and the exception's traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **current_fields(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [request_id=… trace_id=…]`, for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = current_fields()
        fields.pop("span_id", None)  # the trace id finds the trace; the line stays short
        if not fields:
            return line
        return f"{line} [{' '.join(f'{name}={value}' for name, value in fields.items())}]"
