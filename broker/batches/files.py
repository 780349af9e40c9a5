"""File storage for the Batch API: metadata in PostgreSQL, content in PostgreSQL or on disk.

Content is always streamed in chunks (about 1 MiB): a 200 MB upload or output file is never
held in memory whole, in ingress or in the tracker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.settings import BatchSettings
from broker.batches.tables import batch_file_chunks, batch_files
from broker.errors import PayloadTooLarge
from broker.stores.database import database_errors

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One stored file's metadata (OpenAI's file object)."""

    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    storage: str
    created_at: datetime

    def body(self) -> dict[str, object]:
        """The OpenAI file object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes,
                "created_at": int(self.created_at.timestamp()), "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None}


class ContentStore(Protocol):
    """Where file bytes live; every method streams."""

    name: str

    async def write(self, file_id: str, chunks: AsyncIterable[bytes], limit: int) -> int:
        """Store `chunks`; the byte count. Raises `PayloadTooLarge` past `limit`."""
        ...

    def read(self, file_id: str) -> AsyncIterator[bytes]:
        """The content, chunk by chunk."""
        ...

    async def delete(self, file_id: str) -> None:
        """Forget the content (no error if there is none)."""
        ...


async def _rechunk(chunks: AsyncIterable[bytes], limit: int) -> AsyncIterator[bytes]:
    buffer, total = bytearray(), 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(total, limit)
        buffer += chunk
        while len(buffer) >= CHUNK_BYTES:
            yield bytes(buffer[:CHUNK_BYTES])
            del buffer[:CHUNK_BYTES]
    if buffer:
        yield bytes(buffer)


class PostgresContent:
    """Content as numbered chunks in `batch_file_chunks`, one statement per chunk."""

    name = "postgres"

    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def write(self, file_id: str, chunks: AsyncIterable[bytes], limit: int) -> int:
        """Store `chunks` in one transaction (a failed upload leaves nothing behind)."""
        total = 0
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                seq = 0
                async for chunk in _rechunk(chunks, limit):
                    await connection.execute(
                        insert(batch_file_chunks).values(file_id=file_id, seq=seq, data=chunk))
                    seq, total = seq + 1, total + len(chunk)
        return total

    async def read(self, file_id: str) -> AsyncIterator[bytes]:
        """One chunk per query, so neither side ever holds the whole file."""
        seq = 0
        while True:
            with database_errors(self._engine):
                async with self._engine.connect() as connection:
                    data = (await connection.execute(
                        select(batch_file_chunks.c.data).where(
                            batch_file_chunks.c.file_id == file_id,
                            batch_file_chunks.c.seq == seq))).scalar_one_or_none()
            if data is None:
                return
            yield bytes(data)
            seq += 1

    async def delete(self, file_id: str) -> None:
        """Drop every chunk of the file."""
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                await connection.execute(
                    delete(batch_file_chunks).where(batch_file_chunks.c.file_id == file_id))


class DiskContent:
    """Content as one file per id under a directory (written to a temporary name first)."""

    name = "disk"

    def __init__(self, directory: Path):
        self._directory = directory

    def _path(self, file_id: str) -> Path:
        return self._directory / file_id

    async def write(self, file_id: str, chunks: AsyncIterable[bytes], limit: int) -> int:
        """Write to `<id>.part`, then rename: readers never see half a file."""
        await asyncio.to_thread(self._directory.mkdir, parents=True, exist_ok=True)
        partial = self._path(file_id).with_suffix(".part")
        total = 0
        handle = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in _rechunk(chunks, limit):
                await asyncio.to_thread(handle.write, chunk)
                total += len(chunk)
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise
        handle.close()
        await asyncio.to_thread(partial.rename, self._path(file_id))
        return total

    async def read(self, file_id: str) -> AsyncIterator[bytes]:
        """The file in 1 MiB reads, each off the event loop."""
        try:
            handle = await asyncio.to_thread(self._path(file_id).open, "rb")
        except FileNotFoundError:
            return
        with handle:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk

    async def delete(self, file_id: str) -> None:
        """Remove the file if it exists."""
        await asyncio.to_thread(self._path(file_id).unlink, missing_ok=True)


class FileStore:
    """Files of every tenant: metadata rows plus content in the configured store.

    Args:
        engine: the ledger database (migrated).
        settings: which content store, and the size limit of uploads.
    """

    def __init__(self, engine: AsyncEngine, settings: BatchSettings):
        self._engine = engine
        self.settings = settings
        self._stores: dict[str, ContentStore] = {
            "postgres": PostgresContent(engine), "disk": DiskContent(settings.batch_file_dir)}

    async def create(self, tenant: str, filename: str, purpose: str,
                     chunks: AsyncIterable[bytes]) -> FileRecord:
        """Store a new file; its metadata row is written once the content is complete.

        Raises:
            PayloadTooLarge: the content is over `batch_max_file_bytes`.
        """
        file_id = f"file-{uuid.uuid4().hex}"
        store = self._stores[self.settings.batch_file_storage]
        size = await store.write(file_id, chunks, self.settings.batch_max_file_bytes)
        values = {"id": file_id, "tenant": tenant, "filename": filename, "purpose": purpose,
                  "bytes": size, "storage": store.name}
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                row = (await connection.execute(
                    insert(batch_files).values(values).returning(*batch_files.c))).one()
        return FileRecord(**row._mapping)

    async def get(self, tenant: str, file_id: str) -> FileRecord | None:
        """The tenant's file, or None (another tenant's file is None, too)."""
        with database_errors(self._engine):
            async with self._engine.connect() as connection:
                row = (await connection.execute(select(*batch_files.c).where(
                    batch_files.c.id == file_id, batch_files.c.tenant == tenant))).one_or_none()
        return FileRecord(**row._mapping) if row is not None else None

    def read(self, record: FileRecord) -> AsyncIterator[bytes]:
        """The file's content, chunk by chunk."""
        return self._stores[record.storage].read(record.id)

    async def delete(self, record: FileRecord) -> None:
        """Delete metadata first (the file disappears at once), then the content."""
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                await connection.execute(delete(batch_files).where(batch_files.c.id == record.id))
        await self._stores[record.storage].delete(record.id)
