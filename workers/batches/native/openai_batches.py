"""OpenAI's Batch API as a `BatchUpstream`: `/v1/files` (purpose=batch) and `/v1/batches`.

A chunk is uploaded as one JSONL file, then a batch is created over it with our chunk id in
its `metadata` (`sluice_chunk`): an answer lost to a timeout or a crash is found again by
listing the account's recent batches, so a chunk is never created twice. Results are the
batch's output and error files; their lines are mapped by `answers`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson

from broker.config import DeploymentConfig
from schemas import ChatCompletionRequest, EmbeddingRequest
from workers.batches.native.answers import openai_answer
from workers.batches.native.http import UpstreamHTTP
from workers.batches.native.upstream import (
    AsyncCallback,
    ChunkToSend,
    Outcome,
    UpstreamAnswer,
    UpstreamBatch,
)

METADATA_KEY = "sluice_chunk"
_ENDED: dict[str, Outcome] = {"completed": "completed", "expired": "expired",
                              "cancelled": "cancelled", "failed": "failed"}
_PAGE = 100
# Batches created this long before the chunk's first submission are not looked at (clocks
# of the provider and ours may differ by a little).
_CLOCK_SKEW_S = 300


class OpenAIBatches:
    """One `openai` deployment's Batch API.

    Args:
        http: Calls to the deployment's `base_url` (e.g. `https://api.openai.com/v1`).
        config: The deployment (its upstream `model` replaces the line's logical one).
    """

    provider = "openai"
    max_lines = 50_000
    max_bytes = 200 * 1024 * 1024

    def __init__(self, http: UpstreamHTTP, config: DeploymentConfig):
        self._http = http
        self.deployment = http.deployment
        self._model = config.model
        self._drop = tuple(config.drop_params)

    def encode_line(self, request_id: str, body: ChatCompletionRequest | EmbeddingRequest,
                    endpoint: str) -> bytes:
        """`{"custom_id", "method", "url", "body"}` with the deployment's upstream model."""
        payload = body.model_dump(mode="json", exclude_none=True)
        payload["model"] = self._model
        for name in self._drop:
            payload.pop(name, None)
        return orjson.dumps({"custom_id": request_id, "method": "POST", "url": endpoint,
                             "body": payload})

    async def submit(self, chunk: ChunkToSend, on_file: AsyncCallback) -> str:
        """Upload the chunk (unless an earlier attempt did) and create its batch."""
        file_id = chunk.upstream_file_id
        if file_id is None:
            file_id = await self._upload(chunk)
            await on_file(file_id)
        created = await self._http.call("POST", "/batches", json={
            "input_file_id": file_id, "endpoint": chunk.endpoint, "completion_window": "24h",
            "metadata": {METADATA_KEY: chunk.id}})
        return str(created["id"])

    async def _upload(self, chunk: ChunkToSend) -> str:
        boundary = f"sluice-{os.urandom(12).hex()}"
        content = b"".join(line + b"\n" for line in chunk.lines)
        body = b"".join((
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f"batch\r\n".encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{chunk.id}.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'.encode(),
            content, f"\r\n--{boundary}--\r\n".encode()))
        uploaded = await self._http.call(
            "POST", "/files", content=body,
            content_type=f"multipart/form-data; boundary={boundary}")
        return str(uploaded["id"])

    async def find(self, chunk_id: str, lines: int, since: datetime) -> list[str]:
        """The batch whose metadata names `chunk_id`, among those created since `since`."""
        oldest = since.timestamp() - _CLOCK_SKEW_S
        params = {"limit": str(_PAGE)}
        while True:
            page = await self._http.call("GET", "/batches", params=params)
            data: list[dict[str, Any]] = page.get("data") or []
            for batch in data:
                if (batch.get("metadata") or {}).get(METADATA_KEY) == chunk_id:
                    return [str(batch["id"])]
            # Newest first: past `oldest`, no older batch can be the chunk's.
            if not data or not page.get("has_more") or data[-1].get("created_at", 0) < oldest:
                return []
            params = {"limit": str(_PAGE), "after": str(data[-1]["id"])}

    async def get(self, batch_id: str) -> UpstreamBatch:
        """`GET /batches/{id}`."""
        return _batch(await self._http.call("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> None:
        """`POST /batches/{id}/cancel` (it goes `cancelling`, then `cancelled`)."""
        await self._http.call("POST", f"/batches/{batch_id}/cancel")

    async def answers(self, batch: UpstreamBatch) -> AsyncIterator[UpstreamAnswer]:
        """The lines of its output file, then of its error file."""
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id is None:
                continue
            async with self._http.lines(f"/files/{file_id}/content") as lines:
                async for line in lines:
                    answer = openai_answer(orjson.loads(line))
                    if answer is not None:
                        yield answer


def _batch(data: dict[str, Any]) -> UpstreamBatch:
    status = str(data["status"])
    errors = (data.get("errors") or {}).get("data") or []
    error = "; ".join(f"line {e.get('line')}: {e.get('message')}" for e in errors) or None
    return UpstreamBatch(id=str(data["id"]), status=status, outcome=_ENDED.get(status),
                         error=error, output_file_id=data.get("output_file_id"),
                         error_file_id=data.get("error_file_id"))
