"""Results of record: which requests already have a final answer, or were moved.

A redelivered request (after a crash, or a rebalance) whose result was already published
must not be sent to a provider again. The ledger keeps every final result in PostgreSQL;
the worker asks once per polled batch, not once per message.

Likewise a request a worker moved to the batch topic for fair share (`InferencePool`): its
copy there will be answered, so the original, given to a worker again because the move
was not committed yet, is skipped. The move is recorded after the copy is acknowledged: a
crash in between leaves a copy unrecorded (the original may then be answered twice, the
documented residual case of a crash), never a record without a copy.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.tables import moved_requests
from broker.stores.tables import requests as requests_table
from schemas import RequestStatus


class FinalResults(Protocol):
    """Answers which of some request ids already reached a final status, or were moved."""

    async def already_final(self, request_ids: Collection[str]) -> set[str]:
        """The subset of `request_ids` that already have a final result."""
        ...

    async def moved(self, request_ids: Collection[str]) -> set[str]:
        """The subset of `request_ids` a worker moved to the batch topic."""
        ...

    async def record_moved(self, request_ids: Collection[str]) -> None:
        """Remember that these requests were moved (their copies are acknowledged)."""
        ...


class NoResultsOfRecord:
    """For workers run without a database: every request is treated as new."""

    def __init__(self) -> None:
        self._moved: set[str] = set()

    async def already_final(self, request_ids: Collection[str]) -> set[str]:
        """Nothing is known to be final."""
        return set()

    async def moved(self, request_ids: Collection[str]) -> set[str]:
        """What this process moved."""
        return self._moved.intersection(request_ids)

    async def record_moved(self, request_ids: Collection[str]) -> None:
        """Remembered in this process only."""
        self._moved.update(request_ids)


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

    async def moved(self, request_ids: Collection[str]) -> set[str]:
        """One indexed query for the whole batch."""
        if not request_ids:
            return set()
        query = select(moved_requests.c.request_id).where(
            moved_requests.c.request_id.in_(list(request_ids)))
        async with self._engine.connect() as connection:
            return set((await connection.execute(query)).scalars())

    async def record_moved(self, request_ids: Collection[str]) -> None:
        """One statement per moved batch."""
        if not request_ids:
            return
        statement = insert(moved_requests).on_conflict_do_nothing()
        async with self._engine.begin() as connection:
            await connection.execute(statement, [{"request_id": i} for i in request_ids])
