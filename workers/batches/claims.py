"""Which tracker works on which batch: a claim timestamp, retaken once stale.

Several `sluice ledger` processes may run; each claims a batch with one atomic `UPDATE`
before launching or finalizing it. A tracker that dies leaves a claim that goes stale, and
another one picks the batch up (every step is idempotent).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Row, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.tables import batches
from broker.stores.database import database_errors

STALE = timedelta(seconds=120)


def _unclaimed() -> Any:
    return or_(batches.c.claimed_at.is_(None), batches.c.claimed_at < func.now() - STALE)


async def candidates(engine: AsyncEngine, *statuses: str) -> list[Row[Any]]:
    """Unclaimed batches in one of `statuses`, oldest first."""
    statement = (select(*batches.c).where(batches.c.status.in_(statuses), _unclaimed())
                 .order_by(batches.c.created_at).limit(50))
    with database_errors(engine):
        async with engine.connect() as connection:
            return list((await connection.execute(statement)).all())


async def claim(engine: AsyncEngine, batch_id: str) -> Row[Any] | None:
    """The batch, now claimed by us; None if someone else holds it."""
    statement = (update(batches).where(batches.c.id == batch_id, _unclaimed())
                 .values(claimed_at=func.now()).returning(*batches.c))
    with database_errors(engine):
        async with engine.begin() as connection:
            return (await connection.execute(statement)).one_or_none()


async def release(engine: AsyncEngine, batch_id: str, **values: Any) -> None:
    """Drop our claim, setting `values` in the same statement."""
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(update(batches).where(batches.c.id == batch_id)
                                     .values(claimed_at=None, **values))
