"""Routing policy: aliases, A/B variants, canary and shadow shares, choice strategies.

Pure configuration and pure functions (no I/O): ingress uses them to resolve aliases, stamp
a request's variant and pick the requests it mirrors; workers use them to order a request's
deployments (`workers.inference.routing`). See README "Routing".
"""

from broker.routing.policy import (
    SHADOW_ACCOUNT,
    CanaryConfig,
    RoutingPolicy,
    ShadowConfig,
    StickyBy,
    Strategy,
    VariantConfig,
    check_routing,
    resolve_alias,
)
from broker.routing.shadow import shadow_copy
from broker.routing.sticky import (
    CANARY,
    SHADOW,
    STABLE,
    assign_variant,
    sticky_value,
    unit_hash,
    variant_deployment,
    with_variant,
)

__all__ = [
    "CANARY",
    "SHADOW",
    "SHADOW_ACCOUNT",
    "STABLE",
    "CanaryConfig",
    "RoutingPolicy",
    "ShadowConfig",
    "StickyBy",
    "Strategy",
    "VariantConfig",
    "assign_variant",
    "check_routing",
    "resolve_alias",
    "shadow_copy",
    "sticky_value",
    "unit_hash",
    "variant_deployment",
    "with_variant",
]
