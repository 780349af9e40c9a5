"""The console's ledger queries: throughput, recent failures, batches across tenants.

Every query takes a `tenant` (None: every tenant, for the admin key) and is bounded
(a recent window, a row limit): the console polls them every few seconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.store import batch_body, line_counts
from broker.batches.tables import batches
from broker.stores.database import database_errors
from broker.stores.tables import requests

_r = requests.c
_RUNNING = ("in_progress", "finalizing", "cancelling")


def _ago(seconds: int) -> Any:
    return func.now() - literal_column(f"interval '{int(seconds)} seconds'")


def _of(statement: Select[Any], column: Any, tenant: str | None) -> Select[Any]:
    return statement if tenant is None else statement.where(column == tenant)


async def throughput(engine: AsyncEngine, tenant: str | None,
                     minutes: int = 15) -> tuple[datetime, list[dict[str, Any]]]:
    """Requests finished per model, status and minute over the last `minutes`; and the
    database's now (the window's end, so the chart does not trust the browser's clock)."""
    minute = func.date_trunc("minute", _r.finished_at).label("minute")
    statement = _of(select(_r.model, _r.status, minute, func.count().label("n"))
                    .where(_r.finished_at >= _ago(minutes * 60)), _r.tenant, tenant)
    statement = statement.group_by(_r.model, _r.status, minute).order_by(minute, _r.model)
    with database_errors(engine):
        async with engine.connect() as connection:
            now = (await connection.execute(select(func.now()))).scalar_one()
            rows = (await connection.execute(statement)).all()
    return now, [{"model": row.model, "status": row.status,
                  "minute": row.minute.isoformat(), "count": int(row.n)} for row in rows]


async def recent_failures(engine: AsyncEngine, tenant: str | None,
                          limit: int = 50) -> list[dict[str, Any]]:
    """The newest failed requests, with the error they were answered."""
    statement = _of(select(_r.id, _r.tenant, _r.model, _r.lane, _r.error, _r.created_at,
                           _r.finished_at).where(_r.status == "failed"), _r.tenant, tenant)
    statement = statement.order_by(_r.finished_at.desc().nulls_last(), _r.id).limit(limit)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return [{"id": row.id, "tenant": row.tenant, "model": row.model, "lane": row.lane,
             "error": row.error or {}, "created_at": row.created_at.isoformat(),
             "finished_at": row.finished_at.isoformat() if row.finished_at else None}
            for row in rows]


async def recent_batches(engine: AsyncEngine, tenant: str | None,
                         limit: int = 50) -> list[dict[str, Any]]:
    """The newest batches as OpenAI shows them (live counts while running), with tenant."""
    statement = _of(select(*batches.c), batches.c.tenant, tenant)
    statement = statement.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    found = []
    for row in rows:
        counts = None
        if row.status in _RUNNING:
            total, completed, failed = await line_counts(engine, row.id)
            counts = (max(row.total, total), completed, failed)
        found.append(batch_body(row, counts) | {"tenant": row.tenant})
    return found
