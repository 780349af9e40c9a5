"""Guardrail decisions as they travel on a final result (`InferenceResult.guardrails`).

A decision says which policy's rule did what, and how often; never what it matched. The
ledger turns each into a `guardrail_events` row, so the ledger can answer "which tenant's
prompts carried card numbers" without ever holding one.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

GuardrailAction = Literal["masked", "blocked", "logged", "flagged", "redacted", "restored"]
"""What a rule did: `masked` (PII replaced before the call), `blocked` (the request or its
answer refused), `logged` (log-only mode: seen, nothing changed), `flagged` (an injection
score over the threshold in flag mode), `redacted` (answer text replaced), `restored`
(placeholders in the answer replaced back by the caller's own values)."""

GuardrailStage = Literal["input", "output"]
"""Where the rule looked: the prompt before the provider call, or the answer after it."""


class GuardrailDecision(BaseModel):
    """One rule of one policy that acted on a request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: Annotated[str, Field(min_length=1, max_length=200)]
    rule: Annotated[str, Field(min_length=1, max_length=200)]
    action: GuardrailAction
    stage: GuardrailStage
    count: Annotated[int, Field(ge=1)] = 1
    """How many matches (PII values, deny-list hits) the decision covers."""
