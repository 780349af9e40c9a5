"""The budget arithmetic: a token bucket sized so that no sliding window is overspent.

Providers enforce limits over a *sliding* window: at most L requests (or tokens) in any
W seconds. A classic token bucket with capacity L refilled at L/W lets 2L through in one
window (a full bucket emptied at once, then a window's refill). So each dimension's
bucket has

    capacity C = b·L          (b = `burst`, a few per cent)
    refill   r = (L - C) / (W + guard)

In any window of W seconds at most what the bucket held at its start (≤ C) plus what
flowed in during it (≤ r·W) can leave: C + r·W ≤ b·L + (1 - b)·L = L. The `guard`
(a fraction of a second) covers calls that reach the provider in a different order or
delay than they were reserved (workers use 1 % of W). The steady state sends
(1 - b)·W/(W + guard) of L: 97.0 % for b = 0.02 and guard = 0.01·W. A bucket starts
empty: the usage of the last window before a restart is unknown, and an empty bucket
cannot overspend it.

A call costs one request and its estimated tokens. A call bigger than the burst may go
only from a full bucket (otherwise it could never go); such a call can overspend its
window by its excess over C, which is logged as a configuration smell (raise `burst`).

The effective limit is `min(configured, learned from the provider's headers) x scale`,
where `scale` is the AIMD factor: each 429 multiplies it by `decrease` (at most once per
`decrease_gap_s`, so one burst of 429s counts once), and it grows back by `recovery` per
window. The same arithmetic runs in PostgreSQL (migration 0003) for every worker; this
module is the reference, run by the in-memory fake and checked against the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")
Vector = tuple[float, float, float, float]
ZERO: Vector = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class BucketShape:
    """How a deployment's buckets are sized (one value per deployment, from config).

    Attributes:
        limits: Configured limits per window, in `DIMENSIONS` order; 0 = unlimited.
        window_s: The provider's window W.
        burst: b, the share of a limit the bucket may hold.
        guard_s: Added to W in the refill rate (ordering and delay slack).
        recovery: Scale regained per window after a 429 (additive increase).
        max_concurrency: Calls in flight at once over every worker; 0 = unlimited.
        lease_s: How long a reservation counts as in flight if never settled (a crash).
    """

    limits: Vector
    window_s: float = 60.0
    burst: float = 0.02
    guard_s: float = 0.02
    recovery: float = 0.05
    max_concurrency: int = 0
    lease_s: float = 120.0

    @property
    def limited(self) -> bool:
        """Whether any dimension or the concurrency is limited."""
        return any(limit > 0 for limit in self.limits) or self.max_concurrency > 0


@dataclass(slots=True)
class BucketState:
    """One deployment's shared state (a row of `budget_state`)."""

    updated_at: float
    scale_at: float
    levels: list[float] = field(default_factory=lambda: [0.0] * 4)
    leases: list[float] = field(default_factory=list)
    reserved: list[float] = field(default_factory=lambda: [0.0] * 4)
    used: list[float] = field(default_factory=lambda: [0.0] * 4)
    learned: list[float] = field(default_factory=lambda: [0.0] * 4)
    blocked_until: float = 0.0
    scale: float = 1.0
    requests_granted: int = 0
    rate_limited: int = 0


@dataclass(frozen=True, slots=True)
class Sized:
    """Effective limit, capacity, refill rate and current level of each dimension."""

    limits: Vector
    capacity: Vector
    rate: Vector
    levels: Vector
    scale: float


def size(shape: BucketShape, state: BucketState, now: float) -> Sized:
    """The buckets as they stand at `now` (refilled since the last update)."""
    scale = min(1.0, state.scale + shape.recovery * max(0.0, now - state.scale_at)
                / shape.window_s)
    limits, capacity, rate, levels = [], [], [], []
    for i in range(4):
        limit = shape.limits[i]
        if limit > 0 and state.learned[i] > 0:
            limit = min(limit, state.learned[i])
        limit *= scale
        cap = shape.burst * limit
        per_s = (limit - cap) / (shape.window_s + shape.guard_s)
        elapsed = max(0.0, now - state.updated_at)
        limits.append(limit)
        capacity.append(cap)
        rate.append(per_s)
        levels.append(min(cap, state.levels[i] + elapsed * per_s))
    return Sized(_vec(limits), _vec(capacity), _vec(rate), _vec(levels), scale)


def wait_s(shape: BucketShape, state: BucketState, sized: Sized, costs: Sequence[float],
           now: float, margin: float = 0.0) -> float:
    """Seconds until a call costing `costs` may go (0: now).

    `margin` (a share of the capacity) must remain above the cost: the batch lane asks
    for one so interactive calls, which ask for none, go first when budget is scarce.
    """
    wait = max(0.0, state.blocked_until - now)
    live = [lease for lease in state.leases if lease > now]
    if shape.max_concurrency > 0 and len(live) >= shape.max_concurrency:
        wait = max(wait, 0.05)  # a settle elsewhere frees a slot; poll gently
    for i in range(4):
        if sized.limits[i] > 0 and costs[i] > 0:
            need = min(costs[i] + margin * sized.capacity[i], sized.capacity[i])
            if sized.levels[i] < need:
                missing = need - sized.levels[i]
                wait = max(wait, missing / sized.rate[i] if sized.rate[i] > 0 else shape.window_s)
    return wait


def _vec(values: Sequence[float]) -> Vector:
    return (values[0], values[1], values[2], values[3])
