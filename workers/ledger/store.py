"""The ledger's writes: one transaction per batch, every statement idempotent.

- usage: `INSERT … ON CONFLICT (event_id) DO NOTHING` — a redelivered event is not a row.
- request: insert as `queued`; if its result got there first, only fill in the lane.
- result: upsert the final status, but only over `queued` — the first final answer wins,
  whichever of request and result arrives first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.database import database_errors, is_data_error, sqlstate
from broker.tables import requests, usage_events
from workers.ledger.pricing import price_usage
from workers.ledger.rows import Kind, LedgerBatch, LedgerRow, Poison

# Each statement is built once and executed with many parameter sets: SQLAlchemy compiles
# it once and caches it. A multi-row VALUES list sized per batch was compiled anew for
# every batch, which cost 45% of the ledger's CPU in the benchmark profile.


def usage_statement() -> Insert:
    """Insert usage rows that are not recorded yet."""
    return insert(usage_events).on_conflict_do_nothing(index_elements=[usage_events.c.event_id])


def request_statement() -> Insert:
    """Insert queued requests; never touch the status of one already recorded."""
    statement = insert(requests)
    return statement.on_conflict_do_update(
        index_elements=[requests.c.id],
        set_={"lane": statement.excluded.lane, "updated_at": func.now()},
        where=requests.c.lane.is_(None),
    )


def result_statement() -> Insert:
    """Record final results; a request that already has one keeps it."""
    statement = insert(requests)
    return statement.on_conflict_do_update(
        index_elements=[requests.c.id],
        set_={
            "status": statement.excluded.status,
            "result": statement.excluded.result,
            "error": statement.excluded.error,
            "finished_at": statement.excluded.finished_at,
            "updated_at": func.now(),
        },
        where=requests.c.status == "queued",
    )


_STATEMENTS = {
    Kind.USAGE: usage_statement(),
    Kind.REQUEST: request_statement(),
    Kind.RESULT: result_statement(),
}


def uniform(rows: Sequence[LedgerRow]) -> list[dict[str, Any]]:
    """Parameter sets with the same keys (one compiled statement serves them all).

    A key some rows lack (e.g. `price_id` of an unpriced call) is NULL for those rows.
    """
    keys = {key for row in rows for key in row.values}
    return [{key: row.values.get(key) for key in keys} for row in rows]


async def _write(connection: AsyncConnection, kind: Kind, rows: Sequence[LedgerRow]) -> None:
    if rows:
        await connection.execute(_STATEMENTS[kind], uniform(rows))


async def write_batch(engine: AsyncEngine, batch: LedgerBatch) -> list[Poison]:
    """Write a batch in one transaction; return the rows PostgreSQL refused as poison.

    Normally every row goes in with a few multi-row statements. If PostgreSQL refuses the
    data itself (SQLSTATE class 22/23: a NUL character, a number out of range), the batch is
    written again row by row under savepoints, so one bad record cannot stall the ledger.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached; nothing was written.
        sqlalchemy.exc.DBAPIError: any other database failure; nothing was written.
    """
    # Kind's order puts requests before results: a result in the same batch then finds
    # (and finalises) the queued row instead of racing it.
    with database_errors(engine):
        try:
            async with engine.begin() as connection:
                await price_usage(connection, batch.rows[Kind.USAGE])
                for kind in Kind:
                    await _write(connection, kind, batch.rows[kind])
            return []
        except DBAPIError as exc:
            if not is_data_error(exc):
                raise
        return await _write_one_by_one(engine, batch)


async def _write_one_by_one(engine: AsyncEngine, batch: LedgerBatch) -> list[Poison]:
    refused: list[Poison] = []
    async with engine.begin() as connection:
        await price_usage(connection, batch.rows[Kind.USAGE])
        for kind in Kind:
            for row in batch.rows[kind]:
                try:
                    async with connection.begin_nested():
                        await _write(connection, kind, [row])
                except DBAPIError as exc:
                    if not is_data_error(exc):
                        raise
                    orig = exc.orig if exc.orig is not None else exc
                    reason = f"refused by PostgreSQL ({sqlstate(exc)}): {orig}"
                    refused.append(Poison(row.record, reason))
    return refused
