"""Guardrails: PII masking, prompt-injection screening and output rules, as named policies.

Policies are declared in the configuration file (`broker.guardrails.config`) and named by
models and API keys. Workers apply them just before the provider call and on the answer
(`workers.inference.guardrails`), so every lane (sync, async, batch, Kafka-native) is
screened and nothing leaves for a provider unscreened; the ledger records each decision in
`guardrail_events` (`broker.stores.guardrail_events`) without the data that matched.
"""

from broker.guardrails.config import (
    ALL_PII_ENTITIES,
    GuardrailPolicy,
    InjectionPolicy,
    OutputPolicy,
    PiiEntity,
    PiiPolicy,
    check_policy_names,
)
from broker.guardrails.screening import (
    BLOCKED_CODE,
    Guardrails,
    Screening,
    blocked_error,
    mask_for_storage,
)

__all__ = [
    "ALL_PII_ENTITIES",
    "BLOCKED_CODE",
    "GuardrailPolicy",
    "Guardrails",
    "InjectionPolicy",
    "OutputPolicy",
    "PiiEntity",
    "PiiPolicy",
    "Screening",
    "blocked_error",
    "check_policy_names",
    "mask_for_storage",
]
