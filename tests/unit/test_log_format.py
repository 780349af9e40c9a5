"""Log lines say which request they are about: JSON for collectors, text for people."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator

import pytest

from broker.telemetry import tracing
from broker.telemetry.exporters import tracer_provider
from broker.telemetry.logs import JsonFormatter, TextFormatter, annotate, log_scope
from broker.telemetry.settings import TelemetrySettings
from broker.telemetry.tracing import tracer
from sluice.runtime import configure_logging
from tests.spans import recorded_spans


def _record(message: str = "called %s", *args: object,
            exc_info: logging._SysExcInfoType | None = None) -> logging.LogRecord:
    return logging.LogRecord("sluice.worker", logging.WARNING, __file__, 1, message,
                             args or ("sim",), exc_info)


def _json_line(record: logging.LogRecord | None = None) -> dict[str, object]:
    line = JsonFormatter().format(record or _record())
    assert "\n" not in line  # one event, one line
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_a_json_line_carries_the_request_it_was_logged_for() -> None:
    with recorded_spans(), log_scope(request_id="req_1", tenant="acme", model="m"):
        annotate(deployment="sim")
        with tracer().start_as_current_span("chat") as span:
            line = _json_line()
    context = span.get_span_context()
    assert line.pop("timestamp") is not None
    assert line == {
        "level": "WARNING", "logger": "sluice.worker", "message": "called sim",
        "request_id": "req_1", "tenant": "acme", "model": "m", "deployment": "sim",
        "trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}",
    }


def test_fields_end_with_their_scope_and_stay_in_their_task() -> None:
    with log_scope(request_id="req_1"):
        annotate(deployment="sim")
    assert set(_json_line()) == {"timestamp", "level", "logger", "message"}

    async def handle(request_id: str, seen: dict[str, object]) -> None:
        with log_scope(request_id=request_id):
            await asyncio.sleep(0)  # the other task runs its scope meanwhile
            seen[request_id] = _json_line()["request_id"]

    async def both() -> dict[str, object]:
        seen: dict[str, object] = {}
        await asyncio.gather(handle("req_a", seen), handle("req_b", seen))
        return seen

    assert asyncio.run(both()) == {"req_a": "req_a", "req_b": "req_b"}


def test_a_json_line_keeps_the_traceback() -> None:
    try:
        raise ValueError("broken adapter")
    except ValueError as exc:
        line = _json_line(_record("failed on %s", exc_info=(type(exc), exc, exc.__traceback__)))
    assert "ValueError: broken adapter" in str(line["exception"])


def test_a_text_line_names_the_request_after_the_message() -> None:
    formatter = TextFormatter()
    assert formatter.format(_record()).endswith("WARNING sluice.worker: called sim")
    with log_scope(request_id="req_1", tenant="acme"):
        assert formatter.format(_record()).endswith(
            "sluice.worker: called sim [request_id=req_1 tenant=acme]")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for name in ("httpx", "httpcore", "aiokafka"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize(("log_format", "formatter"), [("json", JsonFormatter),
                                                       ("text", TextFormatter)])
def test_configure_logging_sets_format_and_level(restored_logging: None, log_format: str,
                                                 formatter: type[logging.Formatter]) -> None:
    settings = TelemetrySettings(log_format=log_format, log_level="debug")  # type: ignore[arg-type]
    configure_logging(settings, environ={})
    root = logging.getLogger()
    assert root.level == logging.DEBUG
    assert [type(handler.formatter) for handler in root.handlers] == [formatter]
    assert not tracing.enabled()  # no SLUICE_TRACES, no collector: no SDK at all


def test_json_logs_by_default_and_an_unknown_level_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLUICE_LOG_FORMAT", "SLUICE_LOG_LEVEL", "SLUICE_TRACES"):
        monkeypatch.delenv(name, raising=False)
    assert TelemetrySettings().log_format == "json"
    with pytest.raises(ValueError, match="unknown log level"):
        TelemetrySettings(log_level="LOUD")


@pytest.mark.parametrize(("traces", "environ", "mode"), [
    (None, {}, "off"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
    ("off", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "off"),
    ("console", {}, "console"),
])
def test_the_trace_mode(traces: str | None, environ: dict[str, str], mode: str) -> None:
    settings = TelemetrySettings(traces=traces)  # type: ignore[arg-type]
    assert settings.trace_mode(environ) == mode


def test_providers_per_mode_name_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert tracer_provider("off", "sluice-worker", os.environ) is None
    for mode in ("console", "otlp"):
        provider = tracer_provider(mode, "sluice-worker", os.environ)  # type: ignore[arg-type]
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "sluice-worker"
        provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ingress-eu-1")  # the operator's name wins
    provider = tracer_provider("console", "sluice-ingress", os.environ)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "ingress-eu-1"
    provider.shutdown()
