"""Privacy: completion text of tenants without `store_content` is kept only long enough to poll.

`requests.result` holds a request's whole final result, because `GET /v1/requests/{id}` is
how asynchronous callers get their answer. Once `ledger_result_retention_s` has passed since
the ledger last wrote the row (`updated_at`), `ContentRetention` removes the message content
of every choice, and any prompt stored while the tenant had opted in; status, model, usage
counts, errors and timestamps stay. Tenants with `store_content` keep everything. The flag
is read from `tenants` inside each statement, so the sweep never acts on a stale answer.

Each sweep (every `ledger_purge_interval_s`) updates at most `batch_size` rows per
transaction, oldest first, through a partial index that holds only the rows still holding
text (migration 0007): rows already cleaned are never read again. Rows of opted-in tenants
stay in that index for good, so a sweep starts where the last complete one ended (minus an
overlap for transactions that committed late) instead of reading them all every time; an
opt-out resets that, because the tenant's old text is then due too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.settings import LedgerSettings
from broker.stores.database import TRANSIENT_DB_ERRORS, database_errors
from broker.stores.tables import REQUEST_HAS_TEXT

logger = logging.getLogger(__name__)

_BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)
# A row is stamped with its transaction's start time but visible only after its commit;
# a sweep re-reads this much before the last one's cutoff, so a slow commit is not skipped.
_OVERLAP = timedelta(minutes=10)

_STATE = text(
    "SELECT now() - make_interval(secs => :retention_s) AS cutoff, "
    "array(SELECT name FROM tenants WHERE store_content) AS opted_in"
)

# The jsonb path test repeats REQUEST_HAS_TEXT's; `#-` removes the key (not just its value),
# so a cleaned row no longer matches the index predicate and leaves the index.
_SWEEP = text(
    """
WITH due AS (
    SELECT id, updated_at FROM requests
    WHERE (""" + REQUEST_HAS_TEXT + """)
      AND updated_at >= :floor AND updated_at < :cutoff
      AND NOT EXISTS (SELECT 1 FROM tenants
                      WHERE tenants.name = requests.tenant AND tenants.store_content)
    ORDER BY updated_at
    LIMIT :limit
    FOR UPDATE OF requests SKIP LOCKED
)
UPDATE requests SET
    prompt = NULL,
    result = CASE WHEN requests.result @? '$.completion.choices[*].message.content'
        THEN jsonb_set(requests.result, '{completion,choices}', (
            SELECT coalesce(jsonb_agg(c.choice #- '{message,content}' ORDER BY c.n), '[]')
            FROM jsonb_array_elements(requests.result #> '{completion,choices}')
                WITH ORDINALITY AS c(choice, n)))
        ELSE requests.result END,
    updated_at = now()
FROM due WHERE requests.id = due.id
RETURNING due.updated_at
"""
)



class ContentRetention:
    """Removes stored text of tenants without `store_content` once it is past retention.

    Args:
        engine: the PostgreSQL engine (migrated).
        settings: `ledger_result_retention_s` and `ledger_purge_interval_s`.
        batch_size: rows per transaction (each is one short UPDATE holding few locks).
    """

    def __init__(
        self, engine: AsyncEngine, settings: LedgerSettings, *, batch_size: int = 1000
    ) -> None:
        self._engine = engine
        self._retention_s = settings.ledger_result_retention_s
        self._interval_s = settings.ledger_purge_interval_s
        self._batch_size = batch_size
        self._floor = _BEGINNING
        self._opted_in: frozenset[str] = frozenset()

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every `ledger_purge_interval_s` until `stop` is set; failures are retried."""
        while not stop.is_set():
            try:
                purged = await self.sweep()
                if purged:
                    logger.info("ledger: removed stored text of %d requests past retention",
                                purged)
            except TRANSIENT_DB_ERRORS as exc:
                logger.warning("ledger: removing stored text failed (%s); retrying in %.0fs",
                               exc, self._interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)

    async def sweep(self) -> int:
        """Remove the text that is due now, batch by batch; return how many rows changed.

        Raises:
            DatabaseUnavailable: PostgreSQL cannot be reached (batches done stay done).
        """
        with database_errors(self._engine):
            async with self._engine.connect() as connection:
                state = (await connection.execute(
                    _STATE, {"retention_s": self._retention_s})).one()
        opted_in = frozenset(state.opted_in)
        if self._opted_in - opted_in:
            self._floor = _BEGINNING  # someone opted out: their old text is due as well
        self._opted_in = opted_in
        floor, purged = self._floor, 0
        while True:
            stamps = await self._purge(floor, state.cutoff)
            purged += len(stamps)
            if len(stamps) < self._batch_size:
                break
            floor = max(stamps)
        self._floor = max(self._floor, state.cutoff - _OVERLAP)
        return purged

    async def _purge(self, floor: datetime, cutoff: datetime) -> Sequence[datetime]:
        params = {"floor": floor, "cutoff": cutoff, "limit": self._batch_size}
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                return (await connection.scalars(_SWEEP, params)).all()
