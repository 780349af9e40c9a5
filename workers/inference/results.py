"""Results of record: which requests already have a final answer.

A redelivered request (after a crash, or a rebalance) whose result was already published
must not be sent to a provider again. The ledger keeps every final result in PostgreSQL;
the worker asks once per polled batch, not once per message.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.tables import requests as requests_table
from schemas import RequestStatus


class FinalResults(Protocol):
    """Answers which of some request ids already reached a final status."""

    async def already_final(self, request_ids: Collection[str]) -> set[str]:
        """The subset of `request_ids` that already have a final result."""
        ...


class NoResultsOfRecord:
    """For workers run without a database: every request is treated as new."""

    async def already_final(self, request_ids: Collection[str]) -> set[str]:
        """Nothing is known to be final."""
        return set()


class PostgresFinalResults:
    """Reads the `requests` table the ledger maintains."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def already_final(self, request_ids: Collection[str]) -> set[str]:
        """One indexed query for the whole batch."""
        if not request_ids:
            return set()
        query = select(requests_table.c.id).where(
            requests_table.c.id.in_(list(request_ids)),
            requests_table.c.status != RequestStatus.QUEUED.value,
        )
        async with self._engine.connect() as connection:
            rows = await connection.execute(query)
            return {row[0] for row in rows}
