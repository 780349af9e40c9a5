"""Whether a process can do its job now: named checks, run together, each with a deadline.

A check answers None when its part is ready, or a short reason when it is not. Checks
that reach out (PostgreSQL, Kafka's group coordinator) are wrapped in `CachedProbe`, so
an orchestrator probing every second, or several probes at once, cost one round trip per
`ttl_s` at most: health checks must never become load on the database they watch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from broker.errors import SluiceError

Check = Callable[[], Awaitable[str | None]]
"""None when ready; otherwise why not, in a few words (shown in `/readyz`'s body)."""

Probe = Callable[[], Awaitable[str | None]]
"""Reaches a dependency once: raises a `SluiceError` (or times out) when it cannot, and
may answer a reason why it is reachable but not ready (a consumer not in its group)."""


def flag(is_ready: Callable[[], bool], reason: str) -> Check:
    """A check over an in-process flag (a consumer joined, a producer connected)."""

    async def check() -> str | None:
        return None if is_ready() else reason

    return check


class CachedProbe:
    """A probe run at most once per `ttl_s`; its verdict is shared by every caller meanwhile.

    Args:
        probe: reaches the dependency (e.g. `SELECT 1`); raises when it cannot.
        ttl_s: how long a verdict (ready or not) is reused.
        timeout_s: a probe that takes longer counts as a failure (a hung database must
            not hang the health endpoint, whose caller has its own short timeout).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, probe: Probe, *, ttl_s: float = 2.0, timeout_s: float = 1.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._verdict: str | None = None
        self.probes = 0  # how many times the dependency was actually reached

    async def __call__(self) -> str | None:
        # Callers arriving while a probe runs wait for it and share its verdict.
        async with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._ttl_s:
                self._verdict = await self._probe_once()
                self._checked_at = self._clock()
            return self._verdict

    async def _probe_once(self) -> str | None:
        self.probes += 1
        try:
            return await asyncio.wait_for(self._probe(), self._timeout_s)
        except TimeoutError:
            return f"no answer within {self._timeout_s:g}s"
        except SluiceError as exc:
            return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Verdict:
    """The outcome of one readiness evaluation."""

    not_ready: dict[str, str] = field(default_factory=dict)
    passed: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        """Whether every check passed."""
        return not self.not_ready

    def as_json(self) -> dict[str, object]:
        """The body of `/readyz`: which checks passed, and why the others did not."""
        return {"ready": self.ready, "checks": {
            **dict.fromkeys(self.passed, "ok"), **self.not_ready}}


class Readiness:
    """Named checks; ready only when all pass.

    Args:
        checks: name → check, e.g. `{"kafka": …, "postgres": …}`.
        timeout_s: a check still running after this is reported not ready.
    """

    def __init__(self, checks: Mapping[str, Check], *, timeout_s: float = 2.0) -> None:
        self._checks = dict(checks)
        self._timeout_s = timeout_s

    @property
    def names(self) -> list[str]:
        """The checks' names, in order."""
        return list(self._checks)

    async def evaluate(self) -> Verdict:
        """Run every check at once and collect the verdict."""
        names = list(self._checks)
        reasons = await asyncio.gather(*(self._run(self._checks[name]) for name in names))
        not_ready = {name: reason for name, reason in zip(names, reasons, strict=True)
                     if reason is not None}
        passed = tuple(name for name in names if name not in not_ready)
        return Verdict(not_ready=not_ready, passed=passed)

    async def _run(self, check: Check) -> str | None:
        try:
            return await asyncio.wait_for(check(), self._timeout_s)
        except TimeoutError:
            return f"no answer within {self._timeout_s:g}s"
        except SluiceError as exc:
            return str(exc) or type(exc).__name__
