"""Settings of the simulated OpenAI-compatible provider (`sluice mock-provider`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class SimulatorSettings(BaseModel):
    """How the simulator behaves; the CLI builds it from flags, tests build it directly.

    Later knobs (rate limits answered with 429 and `x-ratelimit-*` headers, fault
    injection) belong here too, each defaulting to "off" so old configurations keep their
    meaning.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: Annotated[float, Field(ge=0)] = 0.0
    """Fixed delay before every chat completion answer."""
    jitter_ms: Annotated[float, Field(ge=0)] = 0.0
    """Extra delay drawn uniformly from [0, jitter_ms) for each answer."""
    output_tokens: Annotated[int, Field(ge=1)] = 16
    """Completion tokens of an answer not cut short by `max_tokens`."""
    models: Annotated[tuple[str, ...], Field(min_length=1)] = ("sim-model",)
    """Model ids listed by `GET /v1/models`; completions are served for any model name."""
    encoding: str | None = None
    """Token encoding for usage; guessed from each request's model name when None."""
    seed: int | None = None
    """Seed of the jitter generator, for reproducible latency runs."""
