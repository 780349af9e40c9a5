"""Failed authentications, counted per source address, slow down guessing.

A caller that keeps presenting unknown keys costs a database lookup each (the key cache
only remembers what it has looked up). After `limit` failures from one address within
`window_s`, that address's unknown keys are refused with 429 and `Retry-After` without
asking the database; keys the cache knows still work, so clients sharing an address with
a guesser (behind one load balancer) keep working. A lookup counts as a failure from the
moment it starts (and is forgiven if the key turns out valid), so a guesser sending
hundreds of keys at once gets `limit` lookups, not hundreds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class LoginThrottle:
    """Sliding-window failure counts per source, for at most `max_sources` sources."""

    def __init__(self, *, limit: int = 20, window_s: float = 60.0, max_sources: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_sources = max_sources
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._pending: dict[tuple[str, int], float] = {}  # lookups in flight

    def retry_after_s(self, source: str) -> float | None:
        """Seconds until `source` may be asked about unknown keys again, or None now."""
        failures = self._recent(source)
        if failures is None or len(failures) < self._limit:
            return None
        return max(0.0, failures[0] + self._window_s - self._clock())

    def attempt(self, source: str, key: int) -> float:
        """Count a lookup of key `key` (a hash of it) from `source` as failed until it is
        `settle`d valid. Concurrent lookups of one key count once (a service starting
        with a cold cache sends many requests with one valid key at once)."""
        pending = self._pending.get((source, key))
        if pending is not None:
            return pending
        failures = self._recent(source)
        if failures is None:
            while len(self._failures) >= self._max_sources:
                self._failures.pop(next(iter(self._failures)))  # the oldest source
            failures = self._failures[source] = deque()
        stamp = self._clock()
        failures.append(stamp)
        self._pending[(source, key)] = stamp
        return stamp

    def settle(self, source: str, key: int, stamp: float, *, valid: bool) -> None:
        """The lookup counted at `stamp` ended; a valid key was no failure."""
        self._pending.pop((source, key), None)
        failures = self._failures.get(source)
        if valid and failures is not None and stamp in failures:
            failures.remove(stamp)

    def _recent(self, source: str) -> deque[float] | None:
        failures = self._failures.get(source)
        if failures is not None:
            horizon = self._clock() - self._window_s
            while failures and failures[0] <= horizon:
                failures.popleft()
        return failures
