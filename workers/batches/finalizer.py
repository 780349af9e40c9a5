"""Ending batches: send cancellations, expire, and write output and error files.

- `cancelling`: once, publish a `CancelRequested` for every line still queued (workers
  answer those `cancelled`); when no line is queued any more, or `batch_cancel_grace_s`
  has passed (and the provider's batch API, for lines sent there, has ended its batches),
  the rest are marked cancelled and the batch ends `cancelled`.
- `in_progress` past `expires_at`: queued lines become `expired`; the batch ends `expired`.
- `in_progress` with no queued line: `finalizing`, files written, then `completed`.

Files are streamed from `batch_requests` in pages of `PAGE` lines, never built whole.
Lines are written in input order, though OpenAI does not promise any order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.files import FileStore
from broker.batches.lines import output_line
from broker.batches.settings import BatchSettings
from broker.batches.store import line_counts
from broker.batches.tables import batch_requests, batches
from broker.kafka import (
    Producer,
    encode,
    wait_all,
)
from broker.stores.database import database_errors
from schemas import Topics
from schemas.messages import CancelRequested
from workers.batches.budget import release_batch
from workers.batches.claims import candidates, claim, release
from workers.batches.native.store import has_unfinished_chunks

PAGE = 1000
_LINE = batch_requests.c


_NATIVE_EXPIRY_GRACE = timedelta(hours=1)
"""How long an expired batch waits for a provider's batch API to confirm its cancel."""


class Finalizer:
    """One pass over running batches per call of `tick`."""

    def __init__(self, engine: AsyncEngine, files: FileStore, producer: Producer,
                 topics: Topics, settings: BatchSettings):
        self._engine = engine
        self._files = files
        self._producer = producer
        self._topics = topics
        self._settings = settings

    async def tick(self) -> None:
        """Advance every batch that can move."""
        now = datetime.now(UTC)
        for batch in await candidates(self._engine, "cancelling"):
            if batch.cancels_sent_at is None:
                await self._send_cancels(batch)
            elif (not await self._any_queued(batch.id) or (
                    batch.cancelling_at + timedelta(
                        seconds=self._settings.batch_cancel_grace_s) < now
                    # A provider's batch API may take minutes to cancel, and what it
                    # answers meanwhile is billed: those lines end with their answers.
                    and not await has_unfinished_chunks(self._engine, batch.id))):
                await self._finish(batch.id, "cancelled")
        for batch in await candidates(self._engine, "in_progress", "finalizing"):
            if batch.status == "in_progress" and batch.expires_at < now:
                # Lines at a provider's batch API: the lane cancels them there; answers
                # that arrive meanwhile are billed, so they end with their answers.
                if (batch.expires_at + _NATIVE_EXPIRY_GRACE < now
                        or not await has_unfinished_chunks(self._engine, batch.id)):
                    await self._finish(batch.id, "expired")
            elif not await self._any_queued(batch.id):
                await self._finish(batch.id, "completed")

    async def _any_queued(self, batch_id: str) -> bool:
        statement = select(exists().where(_LINE.batch_id == batch_id, _LINE.status == "queued"))
        with database_errors(self._engine):
            async with self._engine.connect() as connection:
                return bool((await connection.execute(statement)).scalar())

    async def _send_cancels(self, batch: Row[Any]) -> None:
        if await claim(self._engine, batch.id) is None:
            return
        now, after = datetime.now(UTC), ""
        while page := await self._queued_ids(batch.id, after):
            futures = [await self._producer.send(
                self._topics.cancels, encode(CancelRequested(
                    request_id=rid, tenant=batch.tenant, requested_at=now)), key=rid.encode())
                for rid in page]
            await wait_all(futures)
            after = page[-1]
        await release(self._engine, batch.id, cancels_sent_at=func.now())

    async def _queued_ids(self, batch_id: str, after: str) -> list[str]:
        statement = (select(_LINE.request_id).where(
            _LINE.batch_id == batch_id, _LINE.status == "queued", _LINE.request_id > after)
            .order_by(_LINE.request_id).limit(PAGE))
        with database_errors(self._engine):
            async with self._engine.connect() as connection:
                return list((await connection.execute(statement)).scalars())

    async def _finish(self, batch_id: str, final: str) -> None:
        batch = await claim(self._engine, batch_id)
        if batch is None:
            return
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                if final == "completed":
                    await connection.execute(update(batches).where(batches.c.id == batch_id)
                                             .values(status="finalizing",
                                                     finalizing_at=func.now()))
                else:  # lines that will not be answered any more end with the batch
                    await connection.execute(update(batch_requests).where(
                        _LINE.batch_id == batch_id, _LINE.status == "queued",
                    ).values(status=final, finished_at=func.now()))
        total, completed, failed = await line_counts(self._engine, batch_id)
        output = await self._write(batch, "output", completed > 0, ("succeeded",))
        errors = await self._write(batch, "error", total > completed,
                                   ("failed", "expired", "cancelled"))
        # The budget hold (launcher.py) ends first: a client that sees the batch final may
        # submit the next one at once and must find the budget free. A crash in between
        # leaves the batch unfinished and the next tracker repeats both (each idempotent).
        await release_batch(self._engine, batch_id)
        await release(self._engine, batch_id, status=final, total=total, completed=completed,
                      failed=failed, output_file_id=output, error_file_id=errors,
                      **{f"{final}_at": func.now()})

    async def _write(self, batch: Row[Any], kind: str, wanted: bool,
                     statuses: tuple[str, ...]) -> str | None:
        if not wanted:
            return None
        record = await self._files.create(batch.tenant, f"{batch.id}_{kind}.jsonl",
                                          "batch_output", self._lines(batch.id, statuses))
        return record.id

    async def _lines(self, batch_id: str, statuses: tuple[str, ...]) -> AsyncIterator[bytes]:
        after = 0
        while True:
            statement = (select(_LINE.request_id, _LINE.custom_id, _LINE.status,
                                _LINE.status_code, _LINE.body, _LINE.line)
                         .where(_LINE.batch_id == batch_id, _LINE.status.in_(statuses),
                                _LINE.line > after).order_by(_LINE.line).limit(PAGE))
            with database_errors(self._engine):
                async with self._engine.connect() as connection:
                    rows = (await connection.execute(statement)).all()
            if not rows:
                return
            yield b"".join(output_line(r.request_id, r.custom_id, r.status, r.status_code,
                                       r.body) for r in rows)
            after = rows[-1].line
