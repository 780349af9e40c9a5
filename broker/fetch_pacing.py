"""Fetch pacing for consumers someone waits on: short when quiet, longer under load or idle.

Why: the embedded broker (Tansu) holds every fetch for the whole `fetch_max_wait_ms`, and
each fetch that finds new records costs it a scan of that partition's whole history. A
consumer with a fixed 5 ms wait therefore makes ~200 scans a second under load, and the
scans grow with every message stored. Under load a longer wait costs little (requests
queue anyway) and brings more records per scan; when quiet, the short wait keeps latency
low. After a while with nothing to read at all, the wait grows to `idle_ms`: an idle
`sluice dev` otherwise kept half a core busy answering empty fetches (measured: 0.47 of a
core with a 5 ms wait, 0.62 with 3 ms); the first request after the pause pays up to one
idle wait per hop. Apache Kafka answers as soon as data arrives, so there pacing changes
nothing.

aiokafka reads the wait from its fetcher for every fetch request but has no public setter;
`FetchPacing` sets that one attribute and does nothing if a future aiokafka lacks it (the
integration test `test_fetch_pacing_reaches_aiokafka` fails then, so it cannot go unseen).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class FetchPacing:
    """Doubles a consumer's fetch wait while polls come back busy; resets it when quiet.

    Args:
        consumer: a started `AIOKafkaConsumer` (anything with `_fetcher` in tests).
        quiet_ms: the wait while traffic is light (the configured `fetch_max_wait_ms`).
        busy_ms: the ceiling under load.
        busy_records: a poll with at least this many records counts as busy; one with at
            most one record means callers are not queueing, so the wait drops back.
        idle_ms: the wait once nothing has been read for `idle_after_s`; None keeps quiet.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        consumer: Any,
        *,
        quiet_ms: int,
        busy_ms: int,
        busy_records: int = 4,
        idle_ms: int | None = None,
        idle_after_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._consumer = consumer
        self.quiet_ms = quiet_ms
        self.busy_ms = max(busy_ms, quiet_ms)
        self._busy_records = busy_records
        self._idle_ms = idle_ms
        self._idle_after_s = idle_after_s
        self._clock = clock
        self._last_read = clock()
        self.wait_ms = quiet_ms

    def observe(self, records: int) -> None:
        """Adjust the wait after a poll that returned `records` records."""
        now = self._clock()
        if records:
            self._last_read = now
        if records >= self._busy_records:
            wanted = min(self.busy_ms, self.wait_ms * 2)
        elif records == 0 and self._idle_ms is not None and (
                now - self._last_read >= self._idle_after_s):
            wanted = self._idle_ms
        elif records <= 1 or self.wait_ms > self.busy_ms:  # quiet, or reading after idle
            wanted = self.quiet_ms
        else:
            return
        if wanted != self.wait_ms:
            self.wait_ms = wanted
            fetcher = getattr(self._consumer, "_fetcher", None)
            if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
                fetcher._fetch_max_wait_ms = wanted
