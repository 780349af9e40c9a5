"""Anthropic's Message Batches API as a `BatchUpstream`: `/v1/messages/batches`.

A chunk is one `POST /v1/messages/batches` of `{"requests": [{"custom_id", "params"}]}`,
each `params` the Messages body `workers.providers.anthropic_format` makes of the line (a
line Anthropic cannot express is refused at launch and answered in our error file). Results
are the batch's JSONL results, one `{"custom_id", "result": {"type": ...}}` per request.

Anthropic batches carry no metadata, so `find` can only name candidates: batches of the
chunk's size created since its first submission (the lane takes a single one, and refuses
to guess between several).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson

from broker.config import DeploymentConfig
from broker.errors import UnsupportedParameter
from schemas import ChatCompletionRequest, EmbeddingRequest, ErrorInfo, RequestStatus
from workers.batches.native.answers import json_object
from workers.batches.native.http import UpstreamHTTP
from workers.batches.native.upstream import (
    AsyncCallback,
    ChunkToSend,
    Outcome,
    UpstreamAnswer,
    UpstreamBatch,
)
from workers.providers.anthropic_format import (
    DEFAULT_MAX_TOKENS,
    from_anthropic_message,
    to_anthropic_request,
)

_PAGE = 100
_CLOCK_SKEW_S = 300
_NOT_RUN = {"canceled": RequestStatus.CANCELLED, "expired": RequestStatus.EXPIRED}
# Anthropic's error types that are the request's own fault, as OpenAI names that.
_REQUEST_ERRORS = frozenset({"invalid_request_error", "request_too_large"})


class AnthropicBatches:
    """One `anthropic` deployment's Message Batches API.

    Args:
        http: Calls to the deployment's API root (default `https://api.anthropic.com`),
            with `x-api-key` and `anthropic-version`.
        config: The deployment (upstream `model`, `max_output_tokens`, `drop_params`).
    """

    provider = "anthropic"
    max_lines = 100_000
    max_bytes = 256 * 1024 * 1024

    def __init__(self, http: UpstreamHTTP, config: DeploymentConfig):
        self._http = http
        self.deployment = http.deployment
        self._model = config.model
        self._max_tokens = config.max_output_tokens or DEFAULT_MAX_TOKENS
        self._drop = tuple(config.drop_params)

    def encode_line(self, request_id: str, body: ChatCompletionRequest | EmbeddingRequest,
                    endpoint: str) -> bytes:
        """`{"custom_id", "params"}`, params in Anthropic's Messages form.

        Raises:
            UnsupportedParameter: An embeddings line (Anthropic has no embeddings), or a
                chat parameter Anthropic cannot express.
        """
        if not isinstance(body, ChatCompletionRequest):
            raise UnsupportedParameter(
                f"deployment '{self.deployment}' (Anthropic) has no embeddings",
                param="input", deployment=self.deployment)
        params = to_anthropic_request(body, model=self._model,
                                      default_max_tokens=self._max_tokens,
                                      deployment=self.deployment, drop_params=self._drop)
        return orjson.dumps({"custom_id": request_id, "params": params})

    async def submit(self, chunk: ChunkToSend, on_file: AsyncCallback) -> str:
        """One call with every request (there is no file to upload)."""
        body = b'{"requests":[' + b",".join(chunk.lines) + b"]}"
        created = await self._http.call("POST", "/v1/messages/batches", content=body,
                                        content_type="application/json")
        return str(created["id"])

    async def find(self, chunk_id: str, lines: int, since: datetime) -> list[str]:
        """Batches of `lines` requests created since `since` (newest first)."""
        oldest = since.timestamp() - _CLOCK_SKEW_S
        found: list[str] = []
        params = {"limit": str(_PAGE)}
        while True:
            page = await self._http.call("GET", "/v1/messages/batches", params=params)
            data: list[dict[str, Any]] = page.get("data") or []
            recent = [b for b in data if _created(b) >= oldest]
            found += [str(b["id"]) for b in recent
                      if sum((b.get("request_counts") or {}).values()) == lines]
            if not data or not page.get("has_more") or len(recent) < len(data):
                return found
            params = {"limit": str(_PAGE), "after_id": str(data[-1]["id"])}

    async def get(self, batch_id: str) -> UpstreamBatch:
        """`GET /v1/messages/batches/{id}`."""
        data = await self._http.call("GET", f"/v1/messages/batches/{batch_id}")
        status = str(data.get("processing_status"))
        outcome: Outcome | None = None
        if status == "ended":
            counts = data.get("request_counts") or {}
            outcome = ("cancelled" if data.get("cancel_initiated_at")
                       else "expired" if counts.get("expired") else "completed")
        return UpstreamBatch(id=str(data["id"]), status=status, outcome=outcome)

    async def cancel(self, batch_id: str) -> None:
        """`POST /v1/messages/batches/{id}/cancel` (it goes `canceling`, then `ended`)."""
        await self._http.call("POST", f"/v1/messages/batches/{batch_id}/cancel")

    async def answers(self, batch: UpstreamBatch) -> AsyncIterator[UpstreamAnswer]:
        """Its result lines, mapped."""
        async with self._http.lines(f"/v1/messages/batches/{batch.id}/results") as lines:
            async for line in lines:
                answer = anthropic_answer(orjson.loads(line))
                if answer is not None:
                    yield answer


def _created(batch: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(batch.get("created_at"))).timestamp()
    except ValueError:
        return 0.0


def anthropic_answer(data: Any) -> UpstreamAnswer | None:
    """One line of a Message Batch's results (None: not a result line)."""
    if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
        return None
    custom_id = data["custom_id"]
    result = json_object(data.get("result"))
    kind = result.get("type")
    if kind in _NOT_RUN:
        return UpstreamAnswer(custom_id, _NOT_RUN[kind])
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        try:
            completion = from_anthropic_message(result["message"])
        except (ValueError, TypeError, AttributeError):
            return UpstreamAnswer(custom_id, RequestStatus.FAILED, error=ErrorInfo(
                type="upstream_error", code="invalid_upstream_answer",
                message="The provider's batch answered this line with something that is "
                        "not a message."))
        return UpstreamAnswer(custom_id, RequestStatus.SUCCEEDED, completion=completion,
                              provider_request_id=completion.id)
    envelope = json_object(result.get("error"))  # {"type": "error", "error": {type, message}}
    error = json_object(envelope.get("error")) or envelope
    kind = str(error.get("type") or "")
    return UpstreamAnswer(custom_id, RequestStatus.FAILED, error=ErrorInfo(
        type="invalid_request_error" if kind in _REQUEST_ERRORS else "upstream_error",
        code=kind or None,
        message=str(error.get("message") or "the provider's batch did not answer this line")))
