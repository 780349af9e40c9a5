"""Whether PostgreSQL answers: the database half of a process's readiness."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text

from broker.stores.database import database_errors

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


async def ping_database(engine: AsyncEngine) -> None:
    """Run `SELECT 1` on a pooled connection.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached or takes no work now.
    """
    with database_errors(engine):
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
