"""Sticky variant assignment: the same caller lands on the same variant, on every worker.

A caller's variant is a pure function of the model, the policy and the caller's sticky
value, through SHA-256 (never Python's `hash`, which is salted per process): every ingress
and worker, before and after a restart, assigns the same variant. Each decision hashes with
its own label (`canary`, `variant`), so the canary's share and the A/B split are
independent of each other.
"""

from __future__ import annotations

import hashlib

from broker.routing.policy import RoutingPolicy
from schemas import InferenceRequest

CANARY = "canary"
STABLE = "stable"
"""The variant of a caller outside the canary, when there is a canary but no A/B split."""
SHADOW = "shadow"
"""The variant of a shadow copy."""

_SCALE = float(2**64)


def unit_hash(*parts: str) -> float:
    """A point in [0, 1) fixed by `parts` (uniform over distinct inputs)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def sticky_value(policy: RoutingPolicy, request: InferenceRequest) -> str:
    """What identifies the caller for `policy.sticky` (prefixed, so a user named like a
    tenant is still another caller)."""
    if policy.sticky == "user":
        user = getattr(request.body, "user", None) or (request.body.model_extra or {}).get(
            "user")
        if isinstance(user, str) and user:
            return f"user:{request.tenant}:{user}"  # users are the tenant's own names
    if policy.sticky in ("user", "key") and request.api_key_id:
        return f"key:{request.api_key_id}"
    return f"tenant:{request.tenant}"


def assign_variant(model: str, policy: RoutingPolicy, request: InferenceRequest) -> str | None:
    """The variant `request`'s caller is assigned to (None: the model has no split).

    The canary takes its share first; the other callers are split between the A/B
    variants by weight (or are `stable` when there are none).
    """
    if policy.canary is None and not policy.variants:
        return None
    caller = sticky_value(policy, request)
    if policy.canary is not None and unit_hash(CANARY, model, caller) * 100 < \
            policy.canary.percent:
        return CANARY
    arms = [(name, variant.weight) for name, variant in policy.variants.items()
            if variant.weight > 0]
    if not arms:
        return STABLE
    point = unit_hash("variant", model, caller) * sum(weight for _, weight in arms)
    for name, weight in arms:
        point -= weight
        if point < 0:
            return name
    return arms[-1][0]  # float rounding at the very top of the range


def variant_deployment(policy: RoutingPolicy, variant: str | None) -> str | None:
    """The deployment a variant is tried on first (None: no preference)."""
    if variant == CANARY and policy.canary is not None:
        return policy.canary.deployment
    arm = policy.variants.get(variant) if variant is not None else None
    return arm.deployment if arm is not None else None


def with_variant(policy: RoutingPolicy, request: InferenceRequest) -> InferenceRequest:
    """`request` stamped with its caller's variant (itself when the model has no split).

    Ingress stamps it so the ledger's request row has it from the start; workers keep it
    (and assign one only to requests produced straight to Kafka).
    """
    variant = assign_variant(request.model, policy, request)
    if variant is None or variant == request.variant:
        return request
    return request.model_copy(update={"variant": variant})
