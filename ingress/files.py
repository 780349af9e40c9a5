"""`/v1/files`: upload (multipart, `purpose=batch`), retrieve, content and delete.

Uploads stream: the multipart body is parsed as it arrives (`ingress.multipart`, never
spooled to a temporary file) and the file part goes into the file store in 1 MiB chunks.
The per-file limit and the tenant's storage quota are enforced while reading, so an upload
over either is answered 413 as soon as it crosses it, and nothing of it is kept. Another
tenant's file id answers 404.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from broker.batches.files import FileRecord, FileStore
from broker.errors import InvalidRequest, NotFound
from ingress.auth import authenticate
from ingress.envelope import json_response
from ingress.multipart import FIELDS_ALLOWANCE, MultipartUpload
from ingress.services import ApiKeyFinder

# Purposes a client may upload; outputs are written by the tracker as `batch_output`.
_PURPOSES = frozenset({"batch"})


async def _owned(files: FileStore, tenant: str, file_id: str) -> FileRecord:
    record = await files.get(tenant, file_id)
    if record is None:
        raise NotFound(f"No such File object: {file_id}")
    return record


def register_file_routes(app: FastAPI, keys: ApiKeyFinder, files: FileStore) -> None:
    """Add the file routes, scoped to the caller's tenant."""

    @app.post("/v1/files")
    async def files_create(request: Request) -> Response:
        tenant = (await authenticate(request, keys)).tenant
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidRequest("Upload files as multipart/form-data with 'file' and "
                                 "'purpose'.", param="file")
        upload = MultipartUpload(request, files.settings.batch_max_file_bytes + FIELDS_ALLOWANCE)
        filename = await upload.file()

        def purpose() -> str:
            value = upload.fields.get("purpose")
            if value not in _PURPOSES:
                raise InvalidRequest("'purpose' must be 'batch'.", param="purpose")
            return value

        if "purpose" in upload.fields:  # sent first, as clients do: checked before the file
            purpose()
        record = await files.upload(tenant, filename or "upload.jsonl", purpose,
                                    upload.content())
        return json_response(record.body())

    @app.get("/v1/files/{file_id}")
    async def files_retrieve(request: Request, file_id: str) -> Response:
        tenant = (await authenticate(request, keys)).tenant
        return json_response((await _owned(files, tenant, file_id)).body())

    @app.get("/v1/files/{file_id}/content")
    async def files_content(request: Request, file_id: str) -> Response:
        tenant = (await authenticate(request, keys)).tenant
        record = await _owned(files, tenant, file_id)
        return StreamingResponse(
            files.read(record), media_type="application/octet-stream",
            headers={"content-length": str(record.bytes),
                     "content-disposition": content_disposition(record.filename)})

    @app.delete("/v1/files/{file_id}")
    async def files_delete(request: Request, file_id: str) -> Response:
        tenant = (await authenticate(request, keys)).tenant
        await files.delete(await _owned(files, tenant, file_id))
        return json_response({"id": file_id, "object": "file", "deleted": True})


def content_disposition(filename: str) -> str:
    """`attachment` naming `filename` for any client (RFC 6266): an ASCII fallback, and the
    exact name percent-encoded as UTF-8. HTTP headers are Latin-1, so a name like
    `données.jsonl` put there as it is could not be sent at all; quotes and line breaks in
    a name must not end the header either."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
