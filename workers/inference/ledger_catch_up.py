"""After a takeover, wait until the ledger has recorded what the dead worker published.

A worker that crashed after publishing a result, but before committing its request's
offset, leaves that request to be redelivered to the partition's next owner. The results of
record (`workers.inference.results`) know it is answered only once the ledger has read the
result; until then the new owner would call the provider, and bill, a second time.

So at a takeover (the first batch of a newly assigned partition that holds requests older
than the assignment and not yet known to be final) the worker notes the end offsets of the
results topic (every result published before now is below them) and waits until the
ledger's consumer group has committed at least those offsets. The ledger commits only after
its PostgreSQL transaction, so the results of record then hold every such answer. Requests
produced after the assignment never wait; neither does a worker whose cluster runs no
ledger (its group never committed and has no member). One catch-up serves every partition
of the worker (all its lanes) taken over at or before it started, and requests that wait
for it hold their slots while everything else on the lane goes on. A ledger that has
committed before but is not running is waited for `NO_LEDGER_GRACE_S` (a restart), not
the whole cap. A worker that stops ends its catch-up (`LedgerCatchUp.close`): the requests
waiting for it go back to Kafka uncalled, as those waiting for budget do.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable

from broker.errors import BrokerUnavailable
from broker.kafka import KafkaError
from broker.kafka.ledger_offsets import KafkaLedgerOffsets, LedgerOffsets
from broker.settings import KafkaSettings
from workers.inference.results import FinalResults, NoResultsOfRecord

log = logging.getLogger("sluice.worker")

LEDGER_CATCH_UP_MAX_S = 30.0
"""The longest a takeover waits for the ledger (seconds). A healthy ledger commits every
few hundred milliseconds, a loaded one within seconds; 30 s also covers a ledger restarting
(joining its group: a session timeout and a rebalance). Past that the ledger is stuck, and
holding the dead worker's requests longer would fail their callers' deadlines: they are
called, at the risk of a second bill, and the warning names the lag."""
NO_LEDGER_GRACE_S = 10.0
"""How long a takeover waits for a ledger that has committed before but has no consumer
in its group now (stopped, or restarting): long enough for a restart to join, short
enough that a ledger that is down does not hold every takeover for the whole cap."""
POLL_S = 0.2
"""Between two reads of the ledger's committed offsets."""
STUCK_QUESTION_S = 5.0
"""How far past the cap a question to Kafka may still be answered: one stuck on a
coordinator that does not answer (a client retries some errors without end) must not hold
the requests taken over past the cap, nor a stopping worker."""
MEMBERS_EVERY_S = 1.0
"""Between two questions whether a ledger runs, while it is behind."""


class Outcome(enum.Enum):
    """How a catch-up ended."""

    CAUGHT_UP = "caught_up"  # the ledger committed past every result published before it
    NO_LEDGER = "no_ledger"  # no ledger ever committed and none runs: nothing to wait for
    LEDGER_DOWN = "ledger_down"  # it committed once, but none ran for NO_LEDGER_GRACE_S
    GAVE_UP = "gave_up"  # LEDGER_CATCH_UP_MAX_S passed first
    STOPPED = "stopped"  # the worker is stopping
    UNAVAILABLE = "unavailable"  # Kafka could not tell


class LedgerCatchUp:
    """A worker's catch-ups: at most one running, shared by every partition (of every
    lane) taken over at or before it started.

    Args:
        offsets: where the ledger's progress is read; None: never wait (no results of
            record to look in again, e.g. a worker run without a database).
        max_wait_s, no_ledger_grace_s, poll_s, stuck_question_s: see the module's
            constants.
        sleep: waits between polls (tests pass a fake clock's).
        clock: monotonic seconds, for the cap.
    """

    def __init__(self, offsets: LedgerOffsets | None, *,
                 max_wait_s: float = LEDGER_CATCH_UP_MAX_S,
                 no_ledger_grace_s: float = NO_LEDGER_GRACE_S, poll_s: float = POLL_S,
                 stuck_question_s: float = STUCK_QUESTION_S,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self._offsets = offsets
        self._max_wait_s = max_wait_s
        self._no_ledger_grace_s = no_ledger_grace_s
        self._poll_s = poll_s
        self._stuck_question_s = stuck_question_s
        self._sleep = sleep
        self._clock = clock
        self._latest: asyncio.Task[Outcome] | None = None
        self._latest_from = float("-inf")  # wall time its end offsets were captured at
        self.started = 0  # catch-ups run (the tests' witness that one is shared)

    async def after_takeover(self, assigned_at: float, stop: asyncio.Event | None = None,
                             ) -> bool:
        """Wait for the catch-up covering a takeover at `assigned_at` (wall seconds).

        Returns:
            Whether to look in the results of record again: True when a catch-up covering
            the takeover ran (or runs) to an end that may have let the ledger record more;
            False when none applies (no database, no ledger ever, Kafka could not tell).
            A catch-up that already ended still answers True: the caller's first look may
            have come before that end.
        """
        if self._offsets is None:
            return False
        if self._latest is None or assigned_at > self._latest_from:
            self._latest_from = time.time()
            self._latest = asyncio.create_task(self._catch_up(self._offsets, stop))
            self.started += 1
        outcome = await asyncio.shield(self._latest)  # one caller's cancel ends not all
        return outcome in (Outcome.CAUGHT_UP, Outcome.GAVE_UP, Outcome.LEDGER_DOWN,
                           Outcome.STOPPED)

    async def close(self) -> None:
        """End a catch-up still running (the worker stops): the requests waiting for it end
        unserved and uncommitted, for the partition's next owner, and its Kafka clients are
        closed now rather than left pending when the event loop ends."""
        latest = self._latest
        if latest is not None and not latest.done():
            latest.cancel()
            # Waited for, not awaited: a cancel of the caller itself must still reach it.
            await asyncio.wait([latest])

    async def _catch_up(self, offsets: LedgerOffsets, stop: asyncio.Event | None) -> Outcome:
        deadline = asyncio.timeout(self._max_wait_s + self._stuck_question_s)
        try:
            async with deadline:
                return await self._wait(offsets, stop)
        except (KafkaError, BrokerUnavailable, OSError) as exc:  # TimeoutError is an OSError
            if isinstance(exc, TimeoutError) and deadline.expired():
                log.warning("Kafka did not answer how far the ledger has read within %.0f s; "
                            "calling requests taken over, an answer the ledger has not "
                            "recorded yet may be billed twice",
                            self._max_wait_s + self._stuck_question_s)
                return Outcome.GAVE_UP
            log.warning("cannot read the ledger's progress (%s); requests taken over are "
                        "called unless already recorded", exc)
            return Outcome.UNAVAILABLE
        finally:
            await offsets.close()

    async def _wait(self, offsets: LedgerOffsets, stop: asyncio.Event | None) -> Outcome:
        began = self._clock()
        # Empty partitions hold nothing to wait for.
        ends = {p: end for p, end in (await offsets.result_ends()).items() if end > 0}
        committed = await offsets.committed(ends)
        if not committed and ends and not await offsets.ledger_has_members():
            log.info("no ledger has ever committed and none runs: not waiting for one")
            return Outcome.NO_LEDGER
        members_asked, last_member = began, began
        while behind := {p: end - committed.get(p, 0) for p, end in ends.items()
                         if committed.get(p, 0) < end}:
            now = self._clock()
            if stop is not None and stop.is_set():
                log.info("stopping: no longer waiting for the ledger")
                return Outcome.STOPPED
            if now - members_asked >= MEMBERS_EVERY_S:
                members_asked = now
                if await offsets.ledger_has_members():
                    last_member = now
                elif now - last_member >= self._no_ledger_grace_s:
                    self._warn(f"no ledger has run for {now - last_member:.0f} s", behind,
                               now - began)
                    return Outcome.LEDGER_DOWN
            if now - began >= self._max_wait_s:
                self._warn("it did not catch up", behind, now - began)
                return Outcome.GAVE_UP
            await self._sleep(self._poll_s)
            committed.update(await offsets.committed(behind))
        return Outcome.CAUGHT_UP

    @staticmethod
    def _warn(why: str, behind: dict[int, int], waited_s: float) -> None:
        log.warning("the ledger is %d results behind (partitions %s) after %.0f s and %s; "
                    "calling requests taken over, an answer it has not recorded yet may be "
                    "billed twice", sum(behind.values()), sorted(behind), waited_s, why)


def catch_up_for(kafka: KafkaSettings, final_results: FinalResults) -> LedgerCatchUp:
    """A worker's catch-up (its lanes share it): none without results of record to look
    in again."""
    if isinstance(final_results, NoResultsOfRecord):
        return LedgerCatchUp(None)
    return LedgerCatchUp(KafkaLedgerOffsets(kafka))
