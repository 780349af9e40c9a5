"""The parameter checks OpenAI makes and sluicegate does not.

sluicegate forwards the parameters it does not read as they came; the simulator plays the
provider, so it refuses what OpenAI refuses, and tests can see a provider's 400 relayed to
the caller with the provider's own words.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class OpenAIParameterRules(BaseModel):
    """Ranges of OpenAI's sampling parameters (the rest of a body is checked elsewhere)."""

    model_config = ConfigDict(extra="ignore")

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("'logprobs' must be true when 'top_logprobs' is set")
        return top
