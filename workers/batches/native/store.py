"""The native lane's SQL: its lines, its chunks (one upstream batch each) and their claims.

Every write that something later depends on commits before that something happens: a
line's row (with its `requests` row for the ledger) before its batch counts it launched,
a chunk's row and its lines before it is submitted, `submit_started_at` before the
provider is called, an uploaded file's id before the batch over it is created, the
upstream batch id as soon as the provider answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, and_, case, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.batches.tables import batches, native_batch_chunks, native_batch_lines
from broker.stores.database import database_errors
from schemas import InferenceRequest
from workers.batches.native.upstream import UPSTREAM_TIMEOUT_S
from workers.ledger.rows import request_row
from workers.ledger.store import request_statement

AnyRow = Row[*tuple[Any, ...]]
"""A row of any shape (read by attribute)."""
STALE = timedelta(seconds=2 * UPSTREAM_TIMEOUT_S)
"""A chunk claim older than this belongs to a tracker that died; another one takes it.
Longer than any one upstream call (a 256 MB upload included), so a live tracker still in
its call is never taken over and its chunk never submitted a second time."""
PAGE = 5000
_CHUNK = native_batch_chunks.c
_LINE = native_batch_lines.c


async def record_lines(connection: AsyncConnection, lines: Sequence[dict[str, Any]],
                       requests: Sequence[InferenceRequest]) -> None:
    """Insert native lines and their `requests` rows, in the caller's transaction.

    The ledger records a request when it reads it on a request topic; native lines never
    go to one (workers must not serve them), so their rows are written here, with the
    ledger's own idempotent statement: the results and usage events the lane publishes
    later find them as the ledger expects.
    """
    if lines:
        await connection.execute(insert(native_batch_lines).on_conflict_do_nothing(),
                                 list(lines))
    if requests:
        await connection.execute(request_statement(), [request_row(r) for r in requests])


async def assign_chunks(engine: AsyncEngine, batch_id: str,
                        limits: Mapping[str, tuple[str, int, int]]) -> int:
    """Put the batch's unassigned lines into new chunks; how many chunks were made.

    `limits` maps each deployment to (provider, most lines, most bytes). Lines keep their
    order; a chunk closes at either limit. The caller holds the batch's claim.
    """
    statement = (select(_LINE.deployment, _LINE.request_id, _LINE.bytes)
                 .where(_LINE.batch_id == batch_id, _LINE.chunk_id.is_(None))
                 .order_by(_LINE.deployment, _LINE.line))
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    groups: list[_Group] = []
    for deployment, request_id, size in rows:
        _, max_lines, max_bytes = limits[deployment]
        if not groups or not groups[-1].takes(deployment, size, max_lines, max_bytes):
            groups.append(_Group(deployment))
        groups[-1].add(request_id, size)
    for group in groups:
        chunk_id = f"nbc_{uuid.uuid4().hex}"
        with database_errors(engine):
            async with engine.begin() as connection:
                await connection.execute(insert(native_batch_chunks).values(
                    id=chunk_id, batch_id=batch_id, deployment=group.deployment,
                    provider=limits[group.deployment][0], lines=len(group.ids),
                    bytes=group.size, state="pending"))
                await connection.execute(update(native_batch_lines).where(
                    _LINE.request_id.in_(group.ids)).values(chunk_id=chunk_id))
    return len(groups)


@dataclass(slots=True)
class _Group:
    """The lines of a chunk being assembled."""

    deployment: str
    ids: list[str] = field(default_factory=list)
    size: int = 0

    def takes(self, deployment: str, size: int, max_lines: int, max_bytes: int) -> bool:
        # A line is its bytes and a newline (or a comma); one line alone always fits.
        return deployment == self.deployment and len(self.ids) < max_lines and (
            self.size + size + 1 <= max_bytes)

    def add(self, request_id: str, size: int) -> None:
        self.ids.append(request_id)
        self.size += size + 1


def _unclaimed() -> Any:
    return or_(_CHUNK.claimed_at.is_(None), _CHUNK.claimed_at < func.now() - STALE)


async def chunks_in(engine: AsyncEngine, *states: str) -> list[AnyRow]:
    """Unclaimed chunks in one of `states`, oldest first, with their batch's status,
    tenant, key and endpoint."""
    # A batch past its window counts as expired here already: its upstream batches are
    # cancelled at once, so nothing is answered (and billed) after our batch ends.
    status = case((and_(batches.c.status == "in_progress", batches.c.expires_at < func.now()),
                   "expired"), else_=batches.c.status)
    statement = (select(*native_batch_chunks.c, status.label("batch_status"),
                        batches.c.tenant, batches.c.api_key_id, batches.c.endpoint)
                 .join(batches, batches.c.id == _CHUNK.batch_id)
                 .where(_CHUNK.state.in_(states), _unclaimed())
                 .order_by(_CHUNK.created_at).limit(100))
    with database_errors(engine):
        async with engine.connect() as connection:
            return list((await connection.execute(statement)).all())


async def claim_chunk(engine: AsyncEngine, chunk_id: str) -> bool:
    """Whether we now hold the chunk (False: another tracker does)."""
    statement = (update(native_batch_chunks).where(_CHUNK.id == chunk_id, _unclaimed())
                 .values(claimed_at=func.now()).returning(_CHUNK.id))
    with database_errors(engine):
        async with engine.begin() as connection:
            return (await connection.execute(statement)).one_or_none() is not None


async def update_chunk(engine: AsyncEngine, chunk_id: str, *, release: bool = False,
                       now: Sequence[str] = (), **values: Any) -> None:
    """Set `values`, and the timestamps named in `now` to the database's time, on the chunk
    (keeping our claim fresh, or dropping it)."""
    values.update(dict.fromkeys(now, func.now()))
    values["claimed_at"] = None if release else func.now()
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(update(native_batch_chunks)
                                     .where(_CHUNK.id == chunk_id).values(**values))


async def record_submitted(engine: AsyncEngine, chunk_id: str, upstream_batch_id: str) -> None:
    """The upstream batch exists: remember its id and drop the lines' copies of it."""
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(update(native_batch_chunks).where(_CHUNK.id == chunk_id)
                                     .values(state="running",
                                             upstream_batch_id=upstream_batch_id,
                                             submitted_at=func.now(), claimed_at=None))
            await connection.execute(update(native_batch_lines)
                                     .where(_LINE.chunk_id == chunk_id).values(payload=None))


async def chunk_payloads(engine: AsyncEngine, chunk_id: str) -> list[bytes]:
    """The chunk's upstream lines, in line order."""
    payloads: list[bytes] = []
    after = -1
    while True:
        statement = (select(_LINE.line, _LINE.payload)
                     .where(_LINE.chunk_id == chunk_id, _LINE.line > after)
                     .order_by(_LINE.line).limit(PAGE))
        with database_errors(engine):
            async with engine.connect() as connection:
                rows = (await connection.execute(statement)).all()
        if not rows:
            return payloads
        payloads += [bytes(row.payload) for row in rows if row.payload is not None]
        after = rows[-1].line


async def chunk_lines(engine: AsyncEngine, chunk_id: str) -> list[AnyRow]:
    """(request_id, model, created_at) of each of the chunk's lines."""
    statement = (select(_LINE.request_id, _LINE.model, _LINE.created_at)
                 .where(_LINE.chunk_id == chunk_id).order_by(_LINE.line))
    with database_errors(engine):
        async with engine.connect() as connection:
            return list((await connection.execute(statement)).all())


async def recorded_upstream_ids(engine: AsyncEngine, ids: Sequence[str]) -> set[str]:
    """Which of `ids` some chunk already follows."""
    if not ids:
        return set()
    statement = select(_CHUNK.upstream_batch_id).where(_CHUNK.upstream_batch_id.in_(ids))
    with database_errors(engine):
        async with engine.connect() as connection:
            return set((await connection.execute(statement)).scalars())


async def has_unfinished_chunks(engine: AsyncEngine, batch_id: str) -> bool:
    """Whether some upstream batch of `batch_id` has not had its answers published yet."""
    statement = select(select(native_batch_chunks.c.id).where(
        _CHUNK.batch_id == batch_id, _CHUNK.state != "done").exists())
    with database_errors(engine):
        async with engine.connect() as connection:
            return bool((await connection.execute(statement)).scalar())
