"""Circuit breakers, one per deployment: stop calling a deployment that keeps failing.

    closed ──(N consecutive failures, or error rate over a window)──▶ open
    open ──(cool-down elapsed)──▶ half-open: one probe call is let through
    half-open ──probe succeeds──▶ closed        half-open ──probe fails──▶ open

Only retriable failures (429, 5xx, timeouts) count against a deployment; a request the
provider rejects says nothing about the deployment's health. Breakers are per worker
process: each process learns on its own, which costs at most `consecutive_failures` calls
per process and needs no coordination.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from broker import metrics
from broker.clock import MonotonicClock
from broker.config import BreakerConfig


class BreakerState(StrEnum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class _Bucket:
    second: int
    calls: int = 0
    failures: int = 0


class CircuitBreaker:
    """The breaker of one deployment."""

    def __init__(self, config: BreakerConfig, clock: MonotonicClock = time.monotonic,
                 deployment: str | None = None) -> None:
        self._config = config
        self._clock = clock
        self._deployment = deployment  # names its `sluice_breaker_state` gauge, if given
        self.state = BreakerState.CLOSED
        self._enter(BreakerState.CLOSED)
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.times_opened = 0
        self._probe_started: float | None = None
        # Per-second buckets: memory bounded by the window length, not by the call rate.
        self._buckets: deque[_Bucket] = deque()

    def allow(self) -> bool:
        """Whether a call may go to this deployment now (a half-open breaker lets one)."""
        if self.state is BreakerState.CLOSED:
            return True
        now = self._clock()
        assert self.opened_at is not None
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self._config.cooldown_s:
                return False
            self._enter(BreakerState.HALF_OPEN)
        # Half-open: one probe at a time. A probe whose outcome never came back (its task
        # was cancelled) must not wedge the breaker, so a stale probe makes room for another.
        if self._probe_started is not None and now - self._probe_started < self._config.cooldown_s:
            return False
        self._probe_started = now
        return True

    def record_success(self) -> None:
        """A call answered: a probe's success closes the breaker."""
        self._count(failed=False)
        self.consecutive_failures = 0
        if self.state is not BreakerState.CLOSED:
            self._enter(BreakerState.CLOSED)
            self.opened_at = None
            self._probe_started = None
            self._buckets.clear()  # the old failures no longer describe the deployment

    def record_failure(self) -> None:
        """A call failed retriably: open on a failed probe, a streak, or a high error rate."""
        self._count(failed=True)
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or self._tripped():
            self._open()

    def _tripped(self) -> bool:
        if self.state is not BreakerState.CLOSED:
            return False
        if self.consecutive_failures >= self._config.consecutive_failures:
            return True
        calls = sum(bucket.calls for bucket in self._buckets)
        failures = sum(bucket.failures for bucket in self._buckets)
        return calls >= self._config.min_calls and failures / calls >= self._config.error_rate

    def _enter(self, state: BreakerState) -> None:
        self.state = state
        if self._deployment is not None:
            metrics.export_breaker(self._deployment, state.value)

    def _open(self) -> None:
        self._enter(BreakerState.OPEN)
        self.opened_at = self._clock()
        self._probe_started = None
        self.times_opened += 1

    def _count(self, *, failed: bool) -> None:
        second = int(self._clock())
        oldest = second - int(self._config.window_s)
        while self._buckets and self._buckets[0].second <= oldest:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1].second != second:
            self._buckets.append(_Bucket(second))
        bucket = self._buckets[-1]
        bucket.calls += 1
        bucket.failures += int(failed)

    def snapshot(self) -> dict[str, Any]:
        """State for the status endpoint."""
        calls = sum(bucket.calls for bucket in self._buckets)
        failures = sum(bucket.failures for bucket in self._buckets)
        reopens_in = None
        if self.state is BreakerState.OPEN and self.opened_at is not None:
            reopens_in = max(0.0, self._config.cooldown_s - (self._clock() - self.opened_at))
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "window_calls": calls,
            "window_failures": failures,
            "times_opened": self.times_opened,
            "half_open_in_s": reopens_in,
        }


class BreakerBoard:
    """Every deployment's breaker, created on first use."""

    def __init__(
        self,
        config: BreakerConfig,
        deployments: Iterable[str] = (),
        clock: MonotonicClock = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._breakers = {name: CircuitBreaker(config, clock, name) for name in deployments}

    def __getitem__(self, deployment: str) -> CircuitBreaker:
        breaker = self._breakers.get(deployment)
        if breaker is None:
            breaker = self._breakers[deployment] = CircuitBreaker(self._config, self._clock,
                                                                  deployment)
        return breaker

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every breaker's state, by deployment name."""
        return {name: breaker.snapshot() for name, breaker in sorted(self._breakers.items())}
