"""How a process traces and logs: read from the environment once, by the composition root."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TraceMode = Literal["off", "console", "otlp"]
LogFormat = Literal["json", "text"]

OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
"""OpenTelemetry's own variables naming a collector; either one turns OTLP export on."""


class TelemetrySettings(BaseSettings):
    """`SLUICE_TRACES`, `SLUICE_LOG_FORMAT` and `SLUICE_LOG_LEVEL`.

    Attributes:
        traces: `otlp` exports spans to the collector OpenTelemetry's standard variables
            name (`OTEL_EXPORTER_OTLP_ENDPOINT`), `console` prints them (`sluice dev`),
            `off` records none. Unset: `otlp` when an OTLP endpoint is set, else `off`.
        log_format: `json` (one object per line, for log collectors; the default) or
            `text` (for people: `sluice dev`).
        log_level: A `logging` level name.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True, extra="ignore")

    traces: TraceMode | None = None
    log_format: LogFormat = "json"
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING or ERROR")
        return level

    def trace_mode(self, environ: Mapping[str, str]) -> TraceMode:
        """The mode in force: `traces` if set, else `otlp` when a collector is named."""
        if self.traces is not None:
            return self.traces
        return "otlp" if any(environ.get(name) for name in OTLP_ENDPOINT_VARIABLES) else "off"
