"""The SQL of `worker_heartbeats`: workers rewrite their row, the console reads them all.

Ages are measured on the database's clock (`now() - beat_at`), the one clock every
process shares, so a worker's skewed clock cannot make it look fresh or stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.database import database_errors
from broker.stores.tables import worker_heartbeats

_h = worker_heartbeats.c
# Rows of workers gone this long are deleted by any worker's next beat.
FORGET_AFTER_S = 3600


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One worker's last report and how long ago (seconds, database clock) it came."""

    worker_id: str
    host: str
    pid: int
    models: list[str]
    state: dict[str, Any]
    started_at: datetime
    age_s: float


async def record_heartbeat(engine: AsyncEngine, *, worker_id: str, host: str, pid: int,
                           models: list[str], state: dict[str, Any],
                           started_at: datetime) -> None:
    """Write (or rewrite) this worker's row, stamped now; forget long-gone workers."""
    values = {"worker_id": worker_id, "host": host, "pid": pid, "models": models,
              "state": state, "started_at": started_at}
    upsert = insert(worker_heartbeats).values({**values, "beat_at": func.now()})
    upsert = upsert.on_conflict_do_update(
        index_elements=[_h.worker_id],
        set_={"models": upsert.excluded.models, "state": upsert.excluded.state,
              "beat_at": func.now()})
    gone = delete(worker_heartbeats).where(
        _h.beat_at < func.now() - literal_column(f"interval '{FORGET_AFTER_S} seconds'"))
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(upsert)
            await connection.execute(gone)


async def forget_heartbeat(engine: AsyncEngine, worker_id: str) -> None:
    """Remove a worker's row (it stopped cleanly: not stale, just gone)."""
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(delete(worker_heartbeats).where(_h.worker_id == worker_id))


async def list_heartbeats(engine: AsyncEngine) -> list[Heartbeat]:
    """Every worker's row, freshest first."""
    age = func.extract("epoch", func.now() - _h.beat_at).label("age_s")
    statement = select(_h.worker_id, _h.host, _h.pid, _h.models, _h.state, _h.started_at,
                       age).order_by(_h.beat_at.desc(), _h.worker_id)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return [Heartbeat(worker_id=row.worker_id, host=row.host, pid=row.pid,
                      models=list(row.models), state=dict(row.state),
                      started_at=row.started_at, age_s=max(0.0, float(row.age_s)))
            for row in rows]
