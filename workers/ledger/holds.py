"""Releasing admission holds whose requests can no longer finish.

A hold ends when the ledger records its request's final result. A request that never
gets one (its message was poison and dead-lettered, or ingress crashed between admitting
and publishing it) would otherwise keep its estimated cost reserved on the budgets and its
place in the tenant's queue (`max_queued_requests`) for good. The sweep runs beside the
ledger, on the content-retention interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from broker.settings import LedgerSettings
from broker.stores.admission import release_stale_holds
from broker.stores.database import TRANSIENT_DB_ERRORS

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)


class StaleHolds:
    """Every `ledger_purge_interval_s`, releases the holds `release_stale_holds` finds."""

    def __init__(self, engine: AsyncEngine, settings: LedgerSettings) -> None:
        self._engine = engine
        self._settings = settings

    async def sweep(self) -> int:
        """Release every stale hold now; return how many."""
        released = 0
        while True:
            batch = await release_stale_holds(
                self._engine, max_age_s=self._settings.ledger_hold_max_age_s,
                orphan_age_s=self._settings.ledger_hold_orphan_age_s)
            released += batch
            if batch < 1000:
                return released

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep until `stop` is set; failures are retried at the next interval."""
        interval = self._settings.ledger_purge_interval_s
        while not stop.is_set():
            try:
                released = await self.sweep()
                if released:
                    logger.warning("ledger: released %d admission holds of requests that "
                                   "can no longer finish", released)
            except TRANSIENT_DB_ERRORS as exc:
                logger.warning("ledger: releasing stale holds failed (%s); retrying in %.0fs",
                               exc, interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
