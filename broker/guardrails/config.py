"""Guardrail policies as the configuration file declares them.

```yaml
guardrails:
  pii-mask:                     # a policy: any of the three sections below
    pii: {mode: mask, entities: [email, card, iban], restore: true}
    injection: {mode: block, threshold: 0.6}
    output:
      mode: redact
      patterns: {internal-host: '\\b[a-z0-9-]+\\.corp\\.example\\b'}
      deny: [project nightingale]
models:
  gpt-4o-mini: {deployments: [sim], guardrails: [pii-mask]}
```

A model lists the policies every request to it passes; an API key may add its own
(`sluice keys create --guardrails a,b`). Names are checked against `guardrails` when the
file loads, so a typo fails at start, not on the first request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PiiEntity = Literal[
    "email", "phone", "card", "iban", "us_ssn", "es_dni", "nl_bsn", "ipv4", "ipv6",
]
"""What the PII detectors find (names are not among them: see `broker.guardrails.pii`)."""

ALL_PII_ENTITIES: tuple[PiiEntity, ...] = (
    "email", "card", "iban", "us_ssn", "es_dni", "nl_bsn", "ipv6", "ipv4", "phone",
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PiiPolicy(_Section):
    """Personal data in prompts: masked before the call, refused, or only recorded."""

    mode: Literal["mask", "block", "log"] = "mask"
    entities: Annotated[list[PiiEntity], Field(min_length=1)] = Field(
        default_factory=lambda: list(ALL_PII_ENTITIES))
    restore: bool = False
    """Put the caller's values back where the answer repeats a placeholder (`<EMAIL_1>`).
    The mapping lives only in the worker's memory for the call."""


class InjectionPolicy(_Section):
    """Prompt-injection screening of user and tool messages (heuristics, scored 0..1)."""

    mode: Literal["block", "flag"] = "block"
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.6


class OutputPolicy(_Section):
    """Rules on the answer: regular expressions (by rule name) and deny-listed phrases."""

    mode: Literal["redact", "block"] = "redact"
    patterns: dict[str, str] = Field(default_factory=dict)
    deny: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """Phrases matched case-insensitively on word boundaries; rule name `deny_list`."""
    replacement: str = "[REDACTED]"

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"output pattern '{name}' is not a regular expression: "
                                 f"{exc}") from exc
        return patterns


class GuardrailPolicy(_Section):
    """One named policy: any of PII, injection and output rules."""

    pii: PiiPolicy | None = None
    injection: InjectionPolicy | None = None
    output: OutputPolicy | None = None

    @model_validator(mode="after")
    def _does_something(self) -> GuardrailPolicy:
        if self.pii is None and self.injection is None and self.output is None:
            raise ValueError("a guardrail policy needs at least one of pii, injection, output")
        return self


def check_policy_names(policies: Mapping[str, GuardrailPolicy],
                       models: Mapping[str, Iterable[str]]) -> None:
    """Every model's `guardrails` names a declared policy.

    Raises:
        ValueError: naming the model and the unknown policy (pydantic reports it).
    """
    for model, names in models.items():
        for index, name in enumerate(names):
            if name not in policies:
                known = ", ".join(sorted(policies)) or "none declared"
                raise ValueError(f"models.{model}.guardrails[{index}]: unknown guardrail "
                                 f"policy '{name}' (known: {known})")
