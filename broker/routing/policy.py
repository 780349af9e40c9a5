"""The `routing:` block of a model and the config's `aliases:`, validated.

```yaml
aliases: {gpt-latest: chat}            # a name clients may ask for -> the model serving it
models:
  chat:
    deployments: [a, b, big]
    routing:
      strategy: weighted               # ordered | weighted | least_busy | lowest_latency | cheapest
      variants: {a: {deployment: a, weight: 90}, b: {deployment: b, weight: 10}}
      sticky: user                     # user | tenant | key
      canary: {deployment: c, percent: 5}
      shadow: {deployment: z, percent: 10}
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # the config imports this module, not the other way round at runtime
    from broker.config import SluiceConfig

Strategy = Literal["ordered", "weighted", "least_busy", "lowest_latency", "cheapest"]
"""`ordered`: the configured order (with the model's optional `weights`); `weighted`: A/B
`variants`; the other three order the model's deployments by what this worker measured
(calls in flight, an EWMA of latency) or by price, the rest following in that order."""
StickyBy = Literal["user", "tenant", "key"]
"""What keeps a caller on its variant: the request's `user` field (else its API key,
else its tenant), its tenant, or its API key (else its tenant)."""

SHADOW_ACCOUNT = "sluice-shadow"
"""The internal tenant shadow copies run and are billed under, unless configured."""
RESERVED_VARIANTS = ("canary", "stable", "shadow")
"""Variant names the canary and shadow policies record; no A/B variant may take one."""

Percent = Annotated[float, Field(ge=0, le=100)]


class VariantConfig(BaseModel):
    """One arm of an A/B split: the deployment tried first for its callers, and its weight."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment: Annotated[str, Field(min_length=1)]
    weight: Annotated[float, Field(ge=0)]


class CanaryConfig(BaseModel):
    """A candidate deployment that gets `percent` of the callers first (sticky, like A/B).

    Raising `percent` keeps every caller already in the canary there: a caller is in it when
    its hash falls below the share, so a larger share only adds callers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment: Annotated[str, Field(min_length=1)]
    percent: Percent


class ShadowConfig(BaseModel):
    """Mirror `percent` of the requests, through the batch lane, to a candidate deployment.

    The copy runs under the internal tenant `account` (billed there, never to the caller's
    tenant), its answer is recorded in the ledger beside the original and never returned.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment: Annotated[str, Field(min_length=1)]
    percent: Percent
    account: Annotated[str, Field(min_length=1)] = SHADOW_ACCOUNT


class RoutingPolicy(BaseModel):
    """How a model's requests pick their deployments, beyond the failover order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy = "ordered"
    variants: dict[str, VariantConfig] = Field(default_factory=dict)
    sticky: StickyBy = "user"
    canary: CanaryConfig | None = None
    shadow: ShadowConfig | None = None

    @model_validator(mode="after")
    def _variants_fit_the_strategy(self) -> RoutingPolicy:
        if self.strategy == "weighted":
            if not any(variant.weight > 0 for variant in self.variants.values()):
                raise ValueError("strategy 'weighted' needs variants with a positive weight")
        elif self.variants:
            raise ValueError(f"variants need strategy 'weighted', not '{self.strategy}'")
        for name in self.variants:
            if name in RESERVED_VARIANTS:
                raise ValueError(f"variants.{name}: '{name}' is reserved "
                                 f"({', '.join(RESERVED_VARIANTS)} are recorded by routing)")
        return self

    def deployments(self) -> dict[str, str]:
        """Every deployment this policy names, by where it names it (for validation)."""
        named = {f"variants.{name}": variant.deployment
                 for name, variant in self.variants.items()}
        if self.canary is not None:
            named["canary"] = self.canary.deployment
        if self.shadow is not None:
            named["shadow"] = self.shadow.deployment
        return named


def check_routing(config: SluiceConfig) -> None:
    """Cross-references the models' routing blocks and the aliases make.

    Raises:
        ValueError: naming the bad key, e.g. `models.chat.routing.canary: unknown
            deployment 'c'` or `aliases.chat: an alias may not shadow a model`.
    """
    for name, model in config.models.items():
        for where, deployment in model.routing.deployments().items():
            if deployment not in config.deployments:
                raise ValueError(
                    f"models.{name}.routing.{where}: unknown deployment '{deployment}' "
                    f"(known: {', '.join(sorted(config.deployments))})")
    for alias, target in config.aliases.items():
        if alias in config.models:
            raise ValueError(f"aliases.{alias}: an alias may not have a model's name")
        if target not in config.models:
            raise ValueError(f"aliases.{alias}: unknown model '{target}' (an alias names a "
                             "model, not another alias)")


def resolve_alias(config: SluiceConfig, name: str) -> str:
    """The model that serves `name`: its alias target, or `name` itself."""
    return config.aliases.get(name, name)
