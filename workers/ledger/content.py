"""Privacy: a request's prompt is stored only for tenants that opted in (`store_content`).

The ledger writes request rows without their messages (they travel beside the values in
`LedgerRow.prompt`). After each batch, `PromptStore` fills in `requests.prompt` for the
requests of opted-in tenants only; by then every request row exists, whichever of request
and result arrived first. Nothing else ever writes the column.

Who opted in is read through `OptedInTenants`, one small query per `ttl_s`, so the prompts
of everyone else are never even sent to PostgreSQL. The UPDATE checks the flag again in
the database: an opt-out takes effect at once, an opt-in within `ttl_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, exists, func, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.stores.database import database_errors, is_data_error, sqlstate
from broker.stores.tables import requests, tenants
from broker.stores.tenants import TenantCache
from workers.ledger.rows import Kind, LedgerBatch, prompt_json

logger = logging.getLogger(__name__)

_STORE_PROMPT = (
    update(requests)
    .where(
        requests.c.id == bindparam("p_id"),
        requests.c.prompt.is_(None),  # a redelivered request changes nothing
        exists().where(tenants.c.name == requests.c.tenant, tenants.c.store_content),
    )
    .values(prompt=bindparam("p_prompt", type_=JSONB), updated_at=func.now())
)


class OptedInTenants:
    """Names of the tenants with `store_content`, read at most once per `ttl_s`.

    Args:
        engine: the PostgreSQL engine (migrated).
        ttl_s: how long an answer is reused; an opt-in is seen within this.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self, engine: AsyncEngine, *, ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tenants = TenantCache(engine, ttl_s=ttl_s, clock=clock)

    async def names(self) -> frozenset[str]:
        """The opted-in tenants, at most `ttl_s` old (the last answer while PostgreSQL is
        away: the UPDATE checks the flag again anyway).

        Raises:
            DatabaseUnavailable: PostgreSQL cannot be reached and nothing was ever read.
        """
        return frozenset(t.name for t in await self._tenants.all() if t.store_content)


class PromptStore:
    """Stores the prompts of opted-in tenants' requests, after their batch is written.

    Args:
        engine: the PostgreSQL engine (migrated).
        opted_in: who stores content; by default read through a 30 s cache.
    """

    def __init__(self, engine: AsyncEngine, opted_in: OptedInTenants | None = None) -> None:
        self._engine = engine
        self._opted_in = opted_in or OptedInTenants(engine)

    async def store(self, batch: LedgerBatch) -> int:
        """Store the prompts of the batch's requests whose tenant opted in; how many were sent.

        Idempotent: a prompt already stored is left alone. A prompt PostgreSQL refuses (a NUL
        character) is skipped with a warning; the request row itself is already recorded.

        Raises:
            DatabaseUnavailable: PostgreSQL cannot be reached; nothing was stored.
        """
        rows = [row for row in batch.rows[Kind.REQUEST] if row.prompt is not None]
        if not rows:
            return 0
        opted_in = await self._opted_in.names()
        params = [
            {"p_id": row.key, "p_prompt": prompt_json(row.prompt)}
            for row in rows
            if row.prompt is not None and row.values["tenant"] in opted_in
        ]
        if not params:
            return 0
        with database_errors(self._engine):
            try:
                async with self._engine.begin() as connection:
                    await connection.execute(_STORE_PROMPT, params)
            except DBAPIError as exc:
                if not is_data_error(exc):
                    raise
                async with self._engine.begin() as connection:
                    await _store_one_by_one(connection, params)
        return len(params)


async def _store_one_by_one(connection: AsyncConnection, params: Sequence[dict[str, Any]]) -> None:
    for one in params:
        try:
            async with connection.begin_nested():
                await connection.execute(_STORE_PROMPT, [one])
        except DBAPIError as exc:
            if not is_data_error(exc):
                raise
            logger.warning(
                "ledger: prompt of request %s not stored: refused by PostgreSQL (%s)",
                one["p_id"], sqlstate(exc),
            )
