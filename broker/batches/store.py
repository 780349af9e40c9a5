"""Batch state in PostgreSQL, as ingress sees it: create, retrieve, list, cancel.

`request_counts` of a running batch are counted from its lines on each read (an indexed
count over at most 50,000 rows), so no counter has to be kept exact under concurrency; a
finished batch keeps its final counts in its own row.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.tables import batch_requests, batches
from broker.stores.database import database_errors

WINDOWS = {"24h": timedelta(hours=24)}
_TIMES = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
          "failed_at", "expired_at", "cancelling_at", "cancelled_at")


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def batch_body(row: Row[Any], counts: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """The OpenAI batch object of a `batches` row (live `counts` for a running batch)."""
    total, completed, failed = counts or (row.total, row.completed, row.failed)
    errors = {"object": "list", "data": row.errors} if row.errors else None
    return {
        "id": row.id, "object": "batch", "endpoint": row.endpoint, "errors": errors,
        "input_file_id": row.input_file_id, "completion_window": row.completion_window,
        "status": row.status, "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        **{name: _unix(getattr(row, name)) for name in _TIMES},
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": row.metadata,
    }


async def create_batch(engine: AsyncEngine, *, tenant: str, api_key_id: str | None,
                       models: list[str], endpoint: str, input_file_id: str, window: str,
                       metadata: dict[str, str] | None) -> dict[str, Any]:
    """Record a new batch in `validating`; the tracker validates and launches it."""
    now = datetime.now(UTC)
    values = {
        "id": f"batch_{uuid.uuid4().hex}", "tenant": tenant, "api_key_id": api_key_id,
        "models": models, "endpoint": endpoint, "input_file_id": input_file_id,
        "completion_window": window, "status": "validating", "metadata": metadata,
        "created_at": now, "expires_at": now + WINDOWS[window],
    }
    with database_errors(engine):
        async with engine.begin() as connection:
            row = (await connection.execute(
                batches.insert().values(values).returning(*batches.c))).one()
    return batch_body(row)


async def line_counts(engine: AsyncEngine, batch_id: str) -> tuple[int, int, int]:
    """(total, succeeded, failed) lines of a batch, counted now."""
    statement = select(
        func.count(),
        func.count().filter(batch_requests.c.status == "succeeded"),
        func.count().filter(batch_requests.c.status == "failed"),
    ).where(batch_requests.c.batch_id == batch_id)
    with database_errors(engine):
        async with engine.connect() as connection:
            total, completed, failed = (await connection.execute(statement)).one()
    return int(total), int(completed), int(failed)


async def get_batch(engine: AsyncEngine, tenant: str, batch_id: str) -> dict[str, Any] | None:
    """The tenant's batch as OpenAI shows it, or None (another tenant's batch is None)."""
    with database_errors(engine):
        async with engine.connect() as connection:
            row = (await connection.execute(select(*batches.c).where(
                batches.c.id == batch_id, batches.c.tenant == tenant))).one_or_none()
    if row is None:
        return None
    if row.status in ("in_progress", "finalizing", "cancelling"):
        counts = await line_counts(engine, batch_id)
        return batch_body(row, (max(row.total, counts[0]), counts[1], counts[2]))
    return batch_body(row)


async def list_batches(engine: AsyncEngine, tenant: str, after: str | None,
                       limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The tenant's batches, newest first, after the batch `after`; and whether more exist."""
    statement = select(*batches.c).where(batches.c.tenant == tenant)
    with database_errors(engine):
        async with engine.connect() as connection:
            if after is not None:
                anchor = (await connection.execute(select(batches.c.created_at).where(
                    batches.c.id == after, batches.c.tenant == tenant))).scalar_one_or_none()
                if anchor is not None:
                    statement = statement.where(or_(
                        batches.c.created_at < anchor,
                        and_(batches.c.created_at == anchor, batches.c.id < after)))
            rows = (await connection.execute(statement.order_by(
                batches.c.created_at.desc(), batches.c.id.desc()).limit(limit + 1))).all()
    return [batch_body(row) for row in rows[:limit]], len(rows) > limit


async def request_cancel(engine: AsyncEngine, tenant: str, batch_id: str) -> bool:
    """Move a running batch to `cancelling` (the tracker does the rest); False if not found.

    A batch that is already final, or already cancelling, is left as it is.
    """
    with database_errors(engine):
        async with engine.begin() as connection:
            found = (await connection.execute(select(batches.c.status).where(
                batches.c.id == batch_id, batches.c.tenant == tenant))).scalar_one_or_none()
            if found is None:
                return False
            await connection.execute(update(batches).where(
                batches.c.id == batch_id, batches.c.status.in_(("validating", "in_progress")),
            ).values(status="cancelling", cancelling_at=func.now()))
    return True
