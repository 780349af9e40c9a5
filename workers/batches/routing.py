"""Aliases and A/B or canary variants for batch lines, as ingress applies them to direct calls.

A batch's `models` (fixed at creation by `ingress.access.batch_models`) may list aliases
its key may use. The launcher publishes a line that names one as a request of the model
serving it, with the alias as `requested_model` (so the ledger's `requests` row keeps what
the caller asked for): its topic, its native lane and its guardrail policies are the served
model's. A line bound for a request topic is then stamped with its caller's variant
(`broker.routing.with_variant`, sticky by user, key or tenant, exactly as ingress stamps a
direct call), so the ledger's row has the variant from the start and the worker tries that
variant's deployment first.

Lines on the native lane get no variant: the provider's batch API of the model's first
deployment serves them all, whatever a variant would prefer.

Without a config (a launcher given none) nothing changes: lines keep the name they give.
"""

from __future__ import annotations

from broker.config import SluiceConfig
from broker.routing import resolve_alias, with_variant
from schemas import InferenceRequest


class BatchRouting:
    """Resolves the names batch lines give and stamps their variants (one config)."""

    def __init__(self, config: SluiceConfig | None) -> None:
        self._config = config

    def served(self, name: str) -> str:
        """The model serving `name`: its alias target, or `name` itself."""
        return resolve_alias(self._config, name) if self._config is not None else name

    def resolve(self, message: InferenceRequest) -> InferenceRequest:
        """`message`, which names what its line asked for, as a request of the model that
        serves it (the alias kept as `requested_model`)."""
        served = self.served(message.model)
        if served == message.model:
            return message
        return message.model_copy(update={"model": served, "requested_model": message.model})

    def with_variant(self, message: InferenceRequest) -> InferenceRequest:
        """`message` stamped with its caller's variant of its (served) model, if the model
        has an A/B split or a canary."""
        model = self._config.models.get(message.model) if self._config is not None else None
        return with_variant(model.routing, message) if model is not None else message
