"""Fetch pacing for consumers someone waits on: a short wait when quiet, longer under load.

Why: the embedded broker (Tansu) holds every fetch for the whole `fetch_max_wait_ms`, and
each fetch that finds new records costs it a scan of that partition's whole history. A
consumer with a fixed 5 ms wait therefore makes ~200 scans a second under load, and the
scans grow with every message stored. Under load a longer wait costs little (requests
queue anyway) and brings more records per scan; when quiet, the short wait keeps latency
low. Apache Kafka answers as soon as data arrives, so there pacing changes nothing.

aiokafka reads the wait from its fetcher for every fetch request but has no public setter;
`FetchPacing` sets that one attribute and does nothing if a future aiokafka lacks it (the
integration test `test_fetch_pacing_reaches_aiokafka` fails then, so it cannot go unseen).
"""

from __future__ import annotations

from typing import Any


class FetchPacing:
    """Doubles a consumer's fetch wait while polls come back busy; resets it when quiet.

    Args:
        consumer: a started `AIOKafkaConsumer` (anything with `_fetcher` in tests).
        quiet_ms: the wait while traffic is light (the configured `fetch_max_wait_ms`).
        busy_ms: the ceiling under load.
        busy_records: a poll with at least this many records counts as busy; one with at
            most one record means callers are not queueing, so the wait drops back.
    """

    def __init__(self, consumer: Any, *, quiet_ms: int, busy_ms: int, busy_records: int = 4):
        self._consumer = consumer
        self.quiet_ms = quiet_ms
        self.busy_ms = max(busy_ms, quiet_ms)
        self._busy_records = busy_records
        self.wait_ms = quiet_ms

    def observe(self, records: int) -> None:
        """Adjust the wait after a poll that returned `records` records."""
        if records >= self._busy_records:
            wanted = min(self.busy_ms, self.wait_ms * 2)
        elif records <= 1:
            wanted = self.quiet_ms
        else:
            return
        if wanted != self.wait_ms:
            self.wait_ms = wanted
            fetcher = getattr(self._consumer, "_fetcher", None)
            if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
                fetcher._fetch_max_wait_ms = wanted
