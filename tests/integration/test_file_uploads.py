"""`POST /v1/files` streams: the per-file limit and the tenant's storage quota are enforced
while the body is read, an upload over either is refused at once and leaves nothing behind.

Bodies are sent through the ASGI transport from a generator, so the test sees exactly how
much of a body the server pulled before answering.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

import broker.batches.files
from broker.settings import KafkaSettings
from broker.stores.keys import create_api_key
from tests.integration.stack import Stack, running_stack

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


class Body:
    """A multipart body (`purpose` then `file`, or the other way) streamed in 64 KiB
    pieces, counting what the server pulled."""

    def __init__(self, size: int, *, purpose: str = "batch", purpose_first: bool = True):
        self.boundary = f"b{uuid.uuid4().hex}"
        self.size = size
        self.purpose = purpose
        self.purpose_first = purpose_first
        self.pulled = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": f"multipart/form-data; boundary={self.boundary}"}

    async def stream(self) -> AsyncIterator[bytes]:
        purpose = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n"
                   f"\r\n{self.purpose}\r\n").encode()
        if self.purpose_first:
            yield self._pull(purpose)
        yield self._pull(f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                         "filename=\"in.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n"
                         .encode())
        left = self.size
        while left:
            piece = min(left, 64 * 1024)
            yield self._pull(b"x" * piece)
            left -= piece
        yield self._pull(b"\r\n")
        if not self.purpose_first:
            yield self._pull(purpose)
        yield self._pull(f"--{self.boundary}--\r\n".encode())

    def _pull(self, data: bytes) -> bytes:
        self.pulled += len(data)
        return data


async def _post(stack: Stack, body: Body, api_key: str | None = None) -> httpx.Response:
    headers = {**body.headers, "Authorization": f"Bearer {api_key or stack.api_key}"}
    return await stack.client.post("/v1/files", content=body.stream(), headers=headers)


async def _stored(stack: Stack) -> tuple[int, int]:
    """(files, content chunks) in the database."""
    return (await stack.scalar("SELECT count(*) FROM batch_files"),
            await stack.scalar("SELECT count(*) FROM batch_file_chunks"))


@pytest.mark.parametrize("storage", ["postgres", "disk"])
async def test_an_upload_over_the_file_limit_is_refused_while_it_streams(
    kafka_settings: KafkaSettings, database_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, storage: str,
) -> None:
    monkeypatch.setenv("SLUICE_BATCH_MAX_FILE_BYTES", str(MIB))
    monkeypatch.setenv("SLUICE_BATCH_FILE_STORAGE", storage)
    monkeypatch.setenv("SLUICE_BATCH_FILE_DIR", str(tmp_path / "files"))
    async with running_stack(kafka_settings, database_url) as stack:
        body = Body(64 * MIB)
        response = await _post(stack, body)
        # Refused when the limit was crossed, not after reading (or spooling) 64 MiB.
        assert body.pulled < 2 * MIB, body.pulled
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "file_too_large"
        assert f"limit of {MIB} bytes per file" in error["message"]
        assert await _stored(stack) == (0, 0)
        assert list((tmp_path / "files").glob("*")) == []  # no partial file either

        # At the limit exactly, and with `purpose` after the file, it is stored.
        fits = Body(MIB, purpose_first=False)
        stored = await _post(stack, fits)
        assert stored.status_code == 200, stored.text
        assert stored.json()["bytes"] == MIB and stored.json()["purpose"] == "batch"
        # A purpose that is not 'batch', named after the file, stores nothing either.
        wrong = await _post(stack, Body(1000, purpose="fine-tune", purpose_first=False))
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "purpose"
        assert (await _stored(stack))[0] == 1
        if storage == "disk":
            assert [p.name for p in (tmp_path / "files").iterdir()] == [stored.json()["id"]]


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_BATCH_MAX_FILE_BYTES", str(MIB))
    async with running_stack(kafka_settings, database_url) as stack:
        body = Body(8 * MIB)
        size = sum([len(chunk) async for chunk in Body(8 * MIB).stream()])
        response = await stack.client.post("/v1/files", content=body.stream(), headers={
            **body.headers, **stack.auth, "content-length": str(size)})
        assert body.pulled == 0  # answered from the header alone
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_too_large"
        assert await _stored(stack) == (0, 0)


async def test_the_storage_quota_refuses_uploads_until_files_are_deleted(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_MAX_FILE_STORAGE_BYTES_PER_TENANT", "3000")
    async with running_stack(kafka_settings, database_url) as stack:
        ids = []
        for _ in range(3):  # 3,000 bytes: the quota, exactly
            response = await _post(stack, Body(1000))
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
        refused = await _post(stack, Body(1000))
        assert refused.status_code == 413, refused.text
        error = refused.json()["error"]
        assert error["code"] == "storage_quota_exceeded"
        assert "quota of 3000 bytes" in error["message"]
        assert "already use 3000 bytes" in error["message"]
        assert "DELETE /v1/files/" in error["message"]
        assert refused.headers.get("retry-after") is None  # waiting frees nothing

        # Another tenant has a quota of its own.
        other_key, _ = await create_api_key(stack.engine, "other-tenant")
        assert (await _post(stack, Body(1000), other_key)).status_code == 200

        deleted = await stack.client.delete(f"/v1/files/{ids[0]}", headers=stack.auth)
        assert deleted.status_code == 200
        # 1,000 bytes free: 1,500 are refused while streaming, 1,000 fit.
        partial = Body(1500)
        assert (await _post(stack, partial)).status_code == 413
        assert partial.pulled < 1500 + 1000
        assert (await _post(stack, Body(1000))).status_code == 200
        assert await stack.scalar(
            "SELECT sum(bytes) FROM batch_files WHERE tenant = 'acme'") == 3000
        assert await stack.scalar("SELECT count(*) FROM batch_file_chunks") == 4


async def test_two_uploads_at_once_cannot_both_pass_the_quota(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_MAX_FILE_STORAGE_BYTES_PER_TENANT", "3000")
    counted = broker.batches.files._used_bytes

    async def slow_count(connection: AsyncConnection, tenant: str) -> int:
        # Both uploads count their tenant's bytes before either records its file.
        used = await counted(connection, tenant)
        await asyncio.sleep(0.3)
        return used

    monkeypatch.setattr(broker.batches.files, "_used_bytes", slow_count)
    async with running_stack(kafka_settings, database_url) as stack:
        answers: list[Any] = await asyncio.gather(_post(stack, Body(1800)),
                                                  _post(stack, Body(1800)))
        assert sorted(a.status_code for a in answers) == [200, 413], [a.text for a in answers]
        assert await stack.scalar("SELECT sum(bytes) FROM batch_files") == 1800
        assert await stack.scalar("SELECT count(DISTINCT file_id) FROM batch_file_chunks") == 1
