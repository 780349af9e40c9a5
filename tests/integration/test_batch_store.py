"""The batch store against PostgreSQL: listing both ways, and deleting an ended batch."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches import store
from broker.batches.files import FileStore
from broker.batches.settings import BatchSettings
from broker.batches.tables import (
    batch_file_chunks,
    batch_files,
    batch_requests,
    batches,
    native_batch_chunks,
    native_batch_lines,
)
from broker.errors import InvalidRequest

pytestmark = pytest.mark.integration


async def _batch(engine: AsyncEngine, tenant: str = "acme", input_file_id: str = "file-in",
                 **values: Any) -> str:
    created = await store.create_batch(
        engine, tenant=tenant, api_key_id=None, models=["m"], endpoint="/v1/chat/completions",
        input_file_id=input_file_id, window="24h", metadata=None)
    if values:
        async with engine.begin() as connection:
            await connection.execute(update(batches).where(batches.c.id == created["id"])
                                     .values(**values))
    return str(created["id"])


async def _count(engine: AsyncEngine, table: Any, **where: Any) -> int:
    statement = select(func.count()).select_from(table).where(
        *(table.c[name] == value for name, value in where.items()))
    async with engine.connect() as connection:
        return int((await connection.execute(statement)).scalar_one())


async def _ids(engine: AsyncEngine, after: str | None = None, before: str | None = None,
               tenant: str = "acme") -> tuple[list[str], bool]:
    page, more = await store.list_batches(engine, tenant, after, 2, before=before)
    return [batch["id"] for batch in page], more


async def test_pages_both_ways_newest_first_with_ties_broken_by_id(engine: AsyncEngine) -> None:
    same = datetime(2026, 1, 1, tzinfo=UTC)
    # Three batches created at the same instant and two earlier ones: the id decides ties.
    ids = [await _batch(engine, created_at=datetime(2025, 12, 31, tzinfo=UTC)),
           await _batch(engine, created_at=datetime(2025, 12, 31, 1, tzinfo=UTC))]
    ids += sorted([await _batch(engine, created_at=same) for _ in range(3)])
    newest = ids[::-1]
    await _batch(engine, tenant="other")  # never shown, never an anchor
    assert await _ids(engine) == (newest[0:2], True)
    assert await _ids(engine, after=newest[1]) == (newest[2:4], True)
    assert await _ids(engine, after=newest[3]) == (newest[4:], False)
    assert await _ids(engine, before=newest[4]) == (newest[2:4], True)
    assert await _ids(engine, before=newest[2]) == (newest[0:2], False)
    assert await _ids(engine, before=newest[1]) == (newest[0:1], False)
    assert await _ids(engine, before=newest[0]) == ([], False)
    # Both bounds: what lies between them, nearest the `before` end first.
    assert await _ids(engine, after=newest[0], before=newest[4]) == (newest[2:4], True)
    assert await _ids(engine, before="batch_unknown") == ([], False)
    other = (await store.list_batches(engine, "other", None, 1))[0][0]["id"]
    assert await _ids(engine, before=other) == ([], False)
    assert await _ids(engine, before=newest[2], tenant="other") == ([], False)


async def _file(files: FileStore, name: str, purpose: str = "batch_output") -> str:
    async def content() -> AsyncIterator[bytes]:
        yield b'{"custom_id": "a"}\n'

    return (await files.create("acme", name, purpose, content())).id


async def _ended_batch(engine: AsyncEngine, files: FileStore, input_file_id: str) -> str:
    """A completed batch with lines, files, and a native line in a finished chunk."""
    output, errors = await _file(files, "out.jsonl"), await _file(files, "err.jsonl")
    batch_id = await _batch(engine, input_file_id=input_file_id, status="completed",
                            output_file_id=output, error_file_id=errors)
    async with engine.begin() as connection:
        await connection.execute(insert(batch_requests), [
            {"request_id": f"{batch_id}-{line}", "batch_id": batch_id, "line": line,
             "custom_id": f"c{line}", "status": "succeeded"} for line in range(3)])
        await connection.execute(insert(native_batch_chunks).values(
            id=f"nbc-{batch_id}", batch_id=batch_id, deployment="d", provider="anthropic",
            lines=1, bytes=10, state="done", upstream_batch_id=f"up-{batch_id}"))
        await connection.execute(insert(native_batch_lines).values(
            request_id=f"{batch_id}-0", batch_id=batch_id, deployment="d", model="m",
            line=0, bytes=10, chunk_id=f"nbc-{batch_id}"))
    return batch_id


async def test_deletes_an_ended_batch_its_lines_and_files(engine: AsyncEngine) -> None:
    files = FileStore(engine, BatchSettings())
    shared_input = await _file(files, "in.jsonl", "batch")
    own_input = await _file(files, "mine.jsonl", "batch")
    kept = await _ended_batch(engine, files, shared_input)
    twin = await _batch(engine, input_file_id=shared_input, status="completed")
    gone = await _ended_batch(engine, files, own_input)
    before = {table.name: await _count(engine, table)
              for table in (batch_requests, native_batch_lines, batch_files)}

    assert await store.delete_batch(engine, "other", gone) is None  # not theirs
    assert await store.get_batch(engine, "acme", gone) is not None
    deleted = await store.delete_batch(engine, "acme", gone, with_input_file=True)

    assert deleted is not None
    assert sorted(record.purpose for record in deleted) == ["batch", "batch_output",
                                                            "batch_output"]
    assert await store.get_batch(engine, "acme", gone) is None
    for record in deleted:
        assert await files.get("acme", record.id) is None
        assert await _count(engine, batch_file_chunks, file_id=record.id) == 0
    assert await _count(engine, batch_requests, batch_id=gone) == 0
    assert await _count(engine, native_batch_lines, batch_id=gone) == 0
    # The chunk stays: it records which upstream batch some chunk followed.
    assert await _count(engine, native_batch_chunks, batch_id=gone) == 1
    # The other batches lost nothing: 3 lines, 1 native line, 3 files less in all.
    assert await _count(engine, batch_requests) == before["batch_requests"] - 3
    assert await _count(engine, native_batch_lines) == before["native_batch_lines"] - 1
    assert await _count(engine, batch_files) == before["batch_files"] - 3
    assert await _count(engine, batch_requests, batch_id=kept) == 3

    # An input file another batch was made from stays with that batch.
    assert await store.delete_batch(engine, "acme", kept, with_input_file=True) is not None
    assert await files.get("acme", shared_input) is not None
    assert await store.get_batch(engine, "acme", twin) is not None
    assert await store.delete_batch(engine, "acme", kept) is None  # already gone


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing", "cancelling"])
async def test_a_batch_still_processing_is_refused(engine: AsyncEngine, status: str) -> None:
    files = FileStore(engine, BatchSettings())
    batch_id = await _ended_batch(engine, files, "file-in")
    async with engine.begin() as connection:
        await connection.execute(update(batches).where(batches.c.id == batch_id)
                                 .values(status=status))
    with pytest.raises(InvalidRequest, match="must be ended or canceled"):
        await store.delete_batch(engine, "acme", batch_id)
    assert await store.get_batch(engine, "acme", batch_id) is not None
    assert await _count(engine, batch_requests, batch_id=batch_id) == 3


async def test_an_ended_batch_with_a_provider_batch_still_open_is_refused(
    engine: AsyncEngine,
) -> None:
    files = FileStore(engine, BatchSettings())
    batch_id = await _ended_batch(engine, files, "file-in")
    async with engine.begin() as connection:  # expired while its upstream batch runs on
        await connection.execute(update(batches).where(batches.c.id == batch_id)
                                 .values(status="expired"))
        await connection.execute(update(native_batch_chunks).where(
            native_batch_chunks.c.batch_id == batch_id).values(state="running"))
    with pytest.raises(InvalidRequest, match="provider's batch API"):
        await store.delete_batch(engine, "acme", batch_id)
    assert await _count(engine, native_batch_lines, batch_id=batch_id) == 1


async def test_content_on_disk_is_left_to_the_file_store(engine: AsyncEngine,
                                                         tmp_path: Path) -> None:
    files = FileStore(engine, BatchSettings(batch_file_storage="disk",
                                            batch_file_dir=tmp_path))
    batch_id = await _ended_batch(engine, files, "file-in")
    deleted = await store.delete_batch(engine, "acme", batch_id)
    assert deleted is not None and len(deleted) == 2
    assert [await files.get("acme", record.id) for record in deleted] == [None, None]
    on_disk = await asyncio.to_thread(os.listdir, tmp_path)
    assert sorted(on_disk) == sorted(record.id for record in deleted)
    for record in deleted:
        await files.delete(record)
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
