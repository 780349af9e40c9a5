"""Running an asyncio service until SIGINT/SIGTERM, with logs and traces set up once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from opentelemetry import trace

from broker.telemetry import tracing
from broker.telemetry.exporters import tracer_provider
from broker.telemetry.logs import JsonFormatter, TextFormatter
from broker.telemetry.settings import TelemetrySettings

DEFAULT_SERVICE = "sluicegate"


def configure_logging(settings: TelemetrySettings | None = None, *,
                      service: str = DEFAULT_SERVICE,
                      environ: Mapping[str, str] | None = None) -> None:
    """The process's logging and tracing, the one place either is configured.

    Log lines go to stderr, as JSON or text (`SLUICE_LOG_FORMAT`) at `SLUICE_LOG_LEVEL`;
    spans go where `SLUICE_TRACES` (or an OTLP endpoint) says, under `service`'s name.

    Args:
        settings: Read from the environment here when not given (this is the edge).
        service: The OpenTelemetry service name (`OTEL_SERVICE_NAME` wins over it).
        environ: The environment the OpenTelemetry variables are read from.
    """
    settings = settings or TelemetrySettings()
    environ = os.environ if environ is None else environ
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # httpx logs every request at INFO: one line per provider call filled the worker's log
    # (1.4 MB per 12k requests) and cost 4% of its CPU under load.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    provider = tracer_provider(settings.trace_mode(environ), service, environ)
    if provider is not None:
        tracing.install(provider)
        # Global too, so any OpenTelemetry-instrumented library joins the same traces.
        trace.set_tracer_provider(provider)


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run `main(stop)` on uvloop when available; SIGINT/SIGTERM set `stop`."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(runner())
    return 0
