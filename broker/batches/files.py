"""File storage for the Batch API: metadata in PostgreSQL, content in PostgreSQL or on disk.

Content is always streamed in chunks (about 1 MiB): a 200 MB upload or output file is never
held in memory whole, in ingress or in the tracker. Uploads are bounded while they stream:
by the per-file limit and by the tenant's storage quota (the sum of its files' sizes, so
deleting a file frees its share at once).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.batches.settings import BatchSettings
from broker.batches.tables import batch_file_chunks, batch_files
from broker.errors import FileTooLarge, PayloadTooLarge, StorageQuotaExceeded
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
        """Store a file the service writes (a batch's output or errors): no quota applies, a
        finished batch must be able to report.

        Raises:
            PayloadTooLarge: the content is over `batch_max_file_bytes`.
        """
        file_id = f"file-{uuid.uuid4().hex}"
        store = self._stores[self.settings.batch_file_storage]
        size = await store.write(file_id, chunks, self.settings.batch_max_file_bytes)
        return await self._record(file_id, tenant, filename, purpose, size, store, quota=None)

    async def upload(self, tenant: str, filename: str, purpose: Callable[[], str],
                     chunks: AsyncIterable[bytes]) -> FileRecord:
        """Store a client's upload within the per-file limit and the tenant's storage quota,
        both enforced while `chunks` is read: an upload over either stops there.

        `purpose` is asked once the content is complete (a multipart body may name it after
        the file); whatever it or `chunks` raises leaves nothing stored.

        Raises:
            FileTooLarge: the content is over `batch_max_file_bytes`.
            StorageQuotaExceeded: the tenant's files would exceed
                `max_file_storage_bytes_per_tenant`.
        """
        cap = self.settings.batch_max_file_bytes
        quota = self.settings.max_file_storage_bytes_per_tenant
        with database_errors(self._engine):
            async with self._engine.connect() as connection:
                used = await _used_bytes(connection, tenant)
        if used >= quota:  # refused before a byte is read
            raise StorageQuotaExceeded(used, quota)
        file_id = f"file-{uuid.uuid4().hex}"
        store = self._stores[self.settings.batch_file_storage]
        try:
            size = await store.write(file_id, chunks, min(cap, quota - used))
        except PayloadTooLarge as exc:
            raise (FileTooLarge(cap) if cap <= quota - used
                   else StorageQuotaExceeded(used, quota)) from exc
        try:
            return await self._record(file_id, tenant, filename, purpose(), size, store,
                                      quota=quota)
        except BaseException:
            await asyncio.shield(store.delete(file_id))
            raise

    async def _record(self, file_id: str, tenant: str, filename: str, purpose: str,
                      size: int, store: ContentStore, quota: int | None) -> FileRecord:
        """Write the metadata row: the file exists from here on."""
        values = {"id": file_id, "tenant": tenant, "filename": filename, "purpose": purpose,
                  "bytes": size, "storage": store.name}
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                if quota is not None:
                    # The tenant's uploads are recorded one at a time (a lock held until
                    # commit), so two that each fit alone cannot both pass the quota.
                    await connection.execute(select(func.pg_advisory_xact_lock(
                        func.hashtextextended(f"sluice.batch_files:{tenant}", 0))))
                    used = await _used_bytes(connection, tenant)
                    if used + size > quota:
                        raise StorageQuotaExceeded(used, quota)
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
        """Delete metadata first (the file disappears, and its bytes leave the tenant's quota,
        at once), then the content."""
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                await connection.execute(delete(batch_files).where(batch_files.c.id == record.id))
        await self._stores[record.storage].delete(record.id)


async def _used_bytes(connection: AsyncConnection, tenant: str) -> int:
    """Bytes of every file the tenant keeps (uploads and outputs)."""
    used = (await connection.execute(select(func.coalesce(func.sum(batch_files.c.bytes), 0))
                                     .where(batch_files.c.tenant == tenant))).scalar_one()
    return int(used)
