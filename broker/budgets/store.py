"""The budget store interface, and the in-memory fake that lives beside the real one.

`PostgresBudgetStore` (postgres.py) shares state between every worker process;
`MemoryBudgetStore` runs the same arithmetic (`broker.budgets.algorithm`) in one process
with an injectable clock, for unit tests and single-process development. One contract
test suite runs against both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from broker.budgets.algorithm import (
    DIMENSIONS,
    BucketShape,
    BucketState,
    Vector,
    size,
    wait_s,
)


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a reservation.

    Attributes:
        granted: Whether the call may go now.
        wait_s: When not granted, how long until it might be (a hint, not a promise).
        lease: Identifies the reservation's in-flight lease; pass it back to `settle`.
        remaining: What the buckets hold after this reservation.
    """

    granted: bool
    wait_s: float
    lease: float = 0.0
    remaining: Vector = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Backoff:
    """What a 429 does to a deployment's budget (AIMD's multiplicative decrease)."""

    block_s: float
    decrease: float = 0.75
    gap_s: float = 1.0
    floor: float = 0.05


class BudgetStore(Protocol):
    """Shared budget state; every method is one atomic operation on one deployment."""

    async def reserve(self, deployment: str, shape: BucketShape, costs: Vector,
                      margin: float = 0.0) -> Grant:
        """Take `costs` (and an in-flight lease) if every bucket has them, else say when."""
        ...

    async def settle(self, deployment: str, shape: BucketShape, reserved: Vector,
                     used: Vector, lease: float) -> None:
        """Give back `reserved - used` (or charge it when negative) and end the lease."""
        ...

    async def rate_limited(self, deployment: str, shape: BucketShape, backoff: Backoff) -> None:
        """A 429: stop every worker for `block_s`, empty the buckets, shrink the scale."""
        ...

    async def learn(self, deployment: str, limits: Vector) -> None:
        """Remember the limits the provider announced (0 = not announced)."""
        ...

    async def snapshot(self, deployment: str, shape: BucketShape) -> dict[str, Any]:
        """Limits, remaining, reserved, used and in-flight count, for visibility."""
        ...


def describe(shape: BucketShape, state: BucketState, now: float) -> dict[str, Any]:
    """The visibility record of one deployment (same keys for every store)."""
    sized = size(shape, state, now)
    return {
        "window_s": shape.window_s,
        "scale": round(sized.scale, 3),
        "blocked_for_s": round(max(0.0, state.blocked_until - now), 3),
        "in_flight": sum(1 for lease in state.leases if lease > now),
        "granted": state.requests_granted,
        "rate_limited": state.rate_limited,
        **{
            name: {
                "limit": round(sized.limits[i], 2),
                "remaining": round(sized.levels[i], 2),
                "reserved": round(state.reserved[i], 2),
                "used": round(state.used[i], 2),
            }
            for i, name in enumerate(DIMENSIONS)
            if shape.limits[i] > 0
        },
    }


class MemoryBudgetStore:
    """The fake: one process's buckets, with an injectable clock (seconds)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.states: dict[str, BucketState] = {}

    def _state(self, deployment: str, now: float) -> BucketState:
        return self.states.setdefault(deployment, BucketState(updated_at=now, scale_at=now))

    async def reserve(self, deployment: str, shape: BucketShape, costs: Vector,
                      margin: float = 0.0) -> Grant:
        """See `BudgetStore.reserve`."""
        now = self._clock()
        state = self._state(deployment, now)
        sized = size(shape, state, now)
        wait = wait_s(shape, state, sized, costs, now, margin)
        state.levels = list(sized.levels)
        state.updated_at = now
        state.leases = [lease for lease in state.leases if lease > now]
        if wait > 0:
            return Grant(False, wait, remaining=sized.levels)
        for i in range(4):
            if sized.limits[i] > 0:
                state.levels[i] -= costs[i]
            state.reserved[i] += costs[i]
        lease = now + shape.lease_s
        state.leases.append(lease)
        state.requests_granted += 1
        return Grant(True, 0.0, lease, _vector(state.levels))

    async def settle(self, deployment: str, shape: BucketShape, reserved: Vector,
                     used: Vector, lease: float) -> None:
        """See `BudgetStore.settle`."""
        now = self._clock()
        state = self._state(deployment, now)
        sized = size(shape, state, now)
        state.levels = list(sized.levels)
        state.updated_at = now
        for i in range(4):
            if sized.limits[i] > 0:
                state.levels[i] = min(sized.capacity[i], state.levels[i] + reserved[i] - used[i])
            state.reserved[i] = max(0.0, state.reserved[i] - reserved[i])
            state.used[i] += used[i]
        if lease in state.leases:
            state.leases.remove(lease)

    async def rate_limited(self, deployment: str, shape: BucketShape, backoff: Backoff) -> None:
        """See `BudgetStore.rate_limited`."""
        now = self._clock()
        state = self._state(deployment, now)
        state.blocked_until = max(state.blocked_until, now + backoff.block_s)
        state.levels = [0.0] * 4
        state.updated_at = now
        state.rate_limited += 1
        if now - state.scale_at >= backoff.gap_s:
            current = min(1.0, state.scale + shape.recovery * (now - state.scale_at)
                          / shape.window_s)
            state.scale = max(backoff.floor, current * backoff.decrease)
            state.scale_at = now

    async def learn(self, deployment: str, limits: Vector) -> None:
        """See `BudgetStore.learn`."""
        self._state(deployment, self._clock()).learned = list(limits)

    async def snapshot(self, deployment: str, shape: BucketShape) -> dict[str, Any]:
        """See `BudgetStore.snapshot`."""
        now = self._clock()
        return describe(shape, self._state(deployment, now), now)


def _vector(values: Sequence[float]) -> Vector:
    return (values[0], values[1], values[2], values[3])
