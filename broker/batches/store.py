"""Batch state in PostgreSQL, as ingress sees it: create, retrieve, list, cancel, delete.

`request_counts` of a running batch are counted from its lines on each read (an indexed
count over at most 50,000 rows), so no counter has to be kept exact under concurrency; a
finished batch keeps its final counts in its own row.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.batches.files import FileRecord
from broker.batches.tables import (
    batch_file_chunks,
    batch_files,
    batch_requests,
    batches,
    native_batch_chunks,
    native_batch_lines,
)
from broker.errors import InvalidRequest
from broker.stores.database import database_errors

WINDOWS = {"24h": timedelta(hours=24)}
ENDED = ("completed", "failed", "expired", "cancelled")
"""Statuses a batch never leaves: nothing works on it any more."""
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


async def list_batches(engine: AsyncEngine, tenant: str, after: str | None, limit: int, *,
                       before: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """The tenant's batches, newest first; and whether more exist the way the page went.

    `after` pages towards older batches: the `limit` batches just older than it (an `after`
    the tenant does not have is ignored, as OpenAI's listing does). `before` pages back
    towards newer ones: the `limit` batches just newer than it, still newest first, and
    `has_more` says whether still newer ones exist (a `before` the tenant does not have
    shows nothing).
    """
    statement = select(*batches.c).where(batches.c.tenant == tenant)
    with database_errors(engine):
        async with engine.connect() as connection:
            if after is not None:
                anchor = await _created_at(connection, tenant, after)
                if anchor is not None:
                    statement = statement.where(or_(
                        batches.c.created_at < anchor,
                        and_(batches.c.created_at == anchor, batches.c.id < after)))
            if before is None:
                rows = (await connection.execute(statement.order_by(
                    batches.c.created_at.desc(), batches.c.id.desc()).limit(limit + 1))).all()
                return [batch_body(row) for row in rows[:limit]], len(rows) > limit
            anchor = await _created_at(connection, tenant, before)
            if anchor is None:
                return [], False
            # Oldest first from the anchor, so the page is the batches nearest to it.
            rows = (await connection.execute(statement.where(or_(
                batches.c.created_at > anchor,
                and_(batches.c.created_at == anchor, batches.c.id > before)))
                .order_by(batches.c.created_at, batches.c.id).limit(limit + 1))).all()
    return [batch_body(row) for row in reversed(rows[:limit])], len(rows) > limit


async def _created_at(connection: AsyncConnection, tenant: str,
                      batch_id: str) -> datetime | None:
    """When the tenant's batch was created (the listing's sort key), or None."""
    moment: datetime | None = (await connection.execute(select(batches.c.created_at).where(
        batches.c.id == batch_id, batches.c.tenant == tenant))).scalar_one_or_none()
    return moment


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


async def delete_batch(engine: AsyncEngine, tenant: str, batch_id: str, *,
                       with_input_file: bool = False) -> list[FileRecord] | None:
    """Forget an ended batch of `tenant`, in one transaction: its row, its lines, its native
    lines, and its output and error files (and, `with_input_file`, its input file unless
    another batch reads it too).

    The ledger's `requests` and usage rows stay: billing history outlives the batch. So do
    the native lane's chunks (all `done` by then, their payloads long dropped): each names
    an upstream batch some chunk followed, and a chunk that lost its provider's answer
    takes only an upstream batch no chunk follows (`workers.batches.native`); forgetting
    one could hand this batch's answers to another tenant's lines.

    Returns:
        The deleted files (None when the tenant has no such batch). Their rows, and their
        content kept in PostgreSQL, went with the batch; content on disk is the caller's
        to remove after the commit (`FileStore.delete`), since a file cannot be removed
        inside a transaction. The files are gone for readers either way.

    Raises:
        InvalidRequest: the batch has not ended, or a provider's batch API is still
            returning some of its lines (an expired batch may end before they are in).
    """
    with database_errors(engine):
        async with engine.begin() as connection:
            # Locked: a second delete waits here and then finds nothing.
            row = (await connection.execute(
                select(batches.c.status, batches.c.input_file_id, batches.c.output_file_id,
                       batches.c.error_file_id)
                .where(batches.c.id == batch_id, batches.c.tenant == tenant)
                .with_for_update())).one_or_none()
            if row is None:
                return None
            if row.status not in ENDED:
                raise InvalidRequest(
                    "This batch is still processing; a batch must be ended or canceled "
                    "before it can be deleted: cancel it first, then delete it once it has "
                    "ended.")
            if await _has_unfinished_chunks(connection, batch_id):
                raise InvalidRequest(
                    "The batch has ended, but a provider's batch API is still returning "
                    "some of its requests; delete it again in a few minutes.")
            file_ids = [row.output_file_id, row.error_file_id]
            if with_input_file and not await _input_shared(connection, row.input_file_id,
                                                           batch_id):
                file_ids.append(row.input_file_id)
            files = (await connection.execute(delete(batch_files).where(
                batch_files.c.id.in_([file_id for file_id in file_ids if file_id]),
                batch_files.c.tenant == tenant).returning(*batch_files.c))).all()
            await connection.execute(delete(batch_file_chunks).where(
                batch_file_chunks.c.file_id.in_([file.id for file in files])))
            await connection.execute(delete(batch_requests).where(
                batch_requests.c.batch_id == batch_id))
            await connection.execute(delete(native_batch_lines).where(
                native_batch_lines.c.batch_id == batch_id))
            await connection.execute(delete(batches).where(batches.c.id == batch_id))
    return [FileRecord(**file._mapping) for file in files]


async def _has_unfinished_chunks(connection: AsyncConnection, batch_id: str) -> bool:
    chunks = native_batch_chunks.c
    return bool((await connection.execute(select(exists().where(
        chunks.batch_id == batch_id, chunks.state != "done")))).scalar())


async def _input_shared(connection: AsyncConnection, file_id: str, batch_id: str) -> bool:
    """Whether another batch was made from the same input file (OpenAI allows that)."""
    return bool((await connection.execute(select(exists().where(
        batches.c.input_file_id == file_id, batches.c.id != batch_id)))).scalar())
