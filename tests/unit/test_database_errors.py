"""Database failures at the edge are 503s (DatabaseUnavailable), whatever their kind."""

from __future__ import annotations

import pytest


def test_a_full_connection_pool_is_a_503_not_a_500() -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeout
    from sqlalchemy.ext.asyncio import create_async_engine

    from broker.errors import DatabaseUnavailable
    from broker.stores.database import database_errors

    engine = create_async_engine("postgresql+asyncpg://sluice@db.internal:5432/sluice")
    with pytest.raises(DatabaseUnavailable, match="no free connection"), database_errors(engine):
        raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")
