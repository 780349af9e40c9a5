"""Settings of the simulated OpenAI-compatible provider (`sluice mock-provider`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

_Share = Annotated[float, Field(ge=0, le=1)]
_ErrorStatus = Annotated[int, Field(ge=400, le=599)]


class FaultWindow(BaseModel):
    """A stretch of time when every call fails: an outage (503) or a 429 burst."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_s: Annotated[float, Field(ge=0)]
    """Seconds after the simulator started."""
    end_s: Annotated[float, Field(gt=0)]
    status: _ErrorStatus = 503
    retry_after_s: Annotated[float, Field(ge=0)] | None = None
    """Sent as `retry-after` (as real providers do on 429)."""

    @model_validator(mode="after")
    def _ordered(self) -> FaultWindow:
        if self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self


class Faults(BaseModel):
    """Injected failures; all off by default. Checked in order: windows, hangs, errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error_rate: _Share = 0.0
    """Share of calls answered with a status drawn from `error_statuses`."""
    error_statuses: Annotated[tuple[_ErrorStatus, ...], Field(min_length=1)] = (
        500, 502, 503, 429,
    )
    timeout_rate: _Share = 0.0
    """Share of calls that hang `hang_s` (longer than a client's timeout), then answer 504."""
    hang_s: Annotated[float, Field(gt=0)] = 30.0
    windows: tuple[FaultWindow, ...] = ()
    stream_cut_rate: _Share = 0.0
    """Share of streamed answers that break off after their first words with an error
    event (and no `[DONE]`), as a provider failing mid-answer."""


class SimulatorSettings(BaseModel):
    """How the simulator behaves; the CLI builds it from flags, tests build it directly.

    Every knob defaults to "off" so old configurations keep their meaning.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: Annotated[float, Field(ge=0)] = 0.0
    """Fixed delay before every chat completion answer."""
    jitter_ms: Annotated[float, Field(ge=0)] = 0.0
    """Extra delay drawn uniformly from [0, jitter_ms) for each answer."""
    output_tokens: Annotated[int, Field(ge=1)] = 16
    """Completion tokens of an answer not cut short by `max_tokens`."""
    answer_bytes: Annotated[int, Field(ge=1)] | None = None
    """Every answer's text is exactly this many bytes (`output_tokens` is then ignored):
    for testing answers too large to queue."""
    models: Annotated[tuple[str, ...], Field(min_length=1)] = ("sim-model",)
    """Model ids listed by `GET /v1/models`; completions are served for any model name."""
    encoding: str | None = None
    """Token encoding for usage; guessed from each request's model name when None."""
    cached_input_share: _Share = 0.0
    """Share of prompt tokens reported as prompt-cache hits (`prompt_tokens_details`)."""
    seed: int | None = None
    """Seed of the jitter and fault generator, for reproducible runs."""
    faults: Faults = Faults()
    """Failures injected into every chat completion call."""
    rpm: Annotated[int, Field(ge=0)] = 0
    """Requests admitted in any `window_s` (sliding, like a provider); 0: unlimited."""
    tpm: Annotated[int, Field(ge=0)] = 0
    """Prompt plus completion tokens admitted in any `window_s`; 0: unlimited."""
    window_s: Annotated[float, Field(gt=0)] = 60.0
    model_faults: dict[str, Faults] = Field(default_factory=dict)
    """Per requested model name, replacing `faults`: one simulator can play a healthy and
    a failing deployment at once."""
