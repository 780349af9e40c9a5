"""Due times of deliveries, in memory and bounded; PostgreSQL keeps the rest.

A full schedule refuses new entries instead of growing: those deliveries stay `pending` in
PostgreSQL and the periodic sweep brings them back once there is room. So memory use is
bounded however many receivers are down, and a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable


class Schedule:
    """A min-heap of (due time, delivery id) with at most `max_size` entries."""

    def __init__(self, max_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_size = max_size
        self._clock = clock
        self._heap: list[tuple[float, str]] = []
        self._members: set[str] = set()
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._members)

    @property
    def room(self) -> int:
        """How many more entries fit."""
        return self._max_size - len(self._members)

    def add(self, delivery: str, delay_s: float = 0.0) -> bool:
        """Schedule `delivery` in `delay_s`; False if full or already scheduled."""
        if delivery in self._members or not self.room:
            return False
        heapq.heappush(self._heap, (self._clock() + delay_s, delivery))
        self._members.add(delivery)
        self.changed.set()
        return True

    def pop_due(self, limit: int) -> list[str]:
        """Up to `limit` deliveries whose time has come, earliest first."""
        now = self._clock()
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now and len(due) < limit:
            _, delivery = heapq.heappop(self._heap)
            self._members.discard(delivery)
            due.append(delivery)
        return due

    def wait_s(self) -> float | None:
        """Seconds until the earliest entry is due (0 if one is), or None when empty."""
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - self._clock())
