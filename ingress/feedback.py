"""Feedback on answers over HTTP (README "Feedback").

- `POST /v1/requests/{id}/feedback` `{score, label?, comment?}`: one entry per caller
  and request: a new post replaces the caller's earlier one (same `id`); 201 with the
  stored entry when new, 200 when it replaced one. Another tenant's id, or an id
  the ledger has not recorded yet, answers 404 exactly like `GET /v1/requests/{id}`.
- `POST /v1/batches/{batch_id}/feedback` `{custom_id, score, label?, comment?}`: the same
  for a batch line, found by its custom id.
- `GET /v1/feedback?from=&to=&group_by=tenant,model,deployment,variant`: count and mean
  score per group (a normal key sees its own tenant only).

`score` is a number from -1 (bad) to 1 (good): thumbs map to -1/1, a 1..5 rating r to
(r - 3) / 2. `comment` is content and stored only when the tenant opted into content
storage; the answer says whether it was (`comment_stored`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import NotFound
from broker.feedback.store import (
    FeedbackEntry,
    batch_line_request,
    feedback_report,
    parse_feedback_group_by,
    record_feedback,
    request_tenant,
)
from broker.stores.usage import parse_time
from ingress.auth import authenticate
from ingress.body import read_json_object, validate_body
from ingress.envelope import json_response
from ingress.services import IngressServices

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

MAX_LABEL_CHARS = 64
MAX_COMMENT_CHARS = 4000


class Feedback(BaseModel):
    """Body of `POST /v1/requests/{id}/feedback`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: Annotated[float, Field(ge=-1, le=1, strict=False)]
    label: Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)] | None = None
    comment: Annotated[str, Field(max_length=MAX_COMMENT_CHARS)] | None = None

    @field_validator("score", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        # JSON true/false would pass as 1/0, and "0.5" as a number: both are mistakes.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("score must be a number from -1 to 1")
        if not math.isfinite(value):
            raise ValueError("score must be finite")
        return value


class BatchLineFeedback(Feedback):
    """Body of `POST /v1/batches/{batch_id}/feedback`."""

    custom_id: Annotated[str, Field(min_length=1, max_length=512)]


def feedback_body(entry: FeedbackEntry, comment_given: bool) -> dict[str, Any]:
    """The API form of a stored entry."""
    body: dict[str, Any] = {
        "id": entry.id, "object": "feedback", "request_id": entry.request_id,
        "score": entry.score, "label": entry.label, "comment": entry.comment,
        "comment_stored": comment_given and entry.comment is not None,
        "created_at": int(entry.created_at.timestamp()),
    }
    if entry.batch_id is not None:
        body.update(batch_id=entry.batch_id, custom_id=entry.custom_id)
    return body


def register_feedback_routes(app: FastAPI, services: IngressServices) -> None:
    """Add the feedback routes (only when the edge has a database)."""
    if services.ledger is None:
        return
    engine: AsyncEngine = services.ledger.engine
    keys = services.api_keys
    max_bytes = services.settings.max_body_bytes

    @app.post("/v1/requests/{request_id}/feedback")
    async def request_feedback(request: Request, request_id: str) -> Response:
        principal = await authenticate(request, keys)
        spec = validate_body(Feedback, await read_json_object(request, max_bytes))
        if await request_tenant(engine, request_id) != principal.tenant:
            raise NotFound(f"No request with id '{request_id}'.")
        entry = await record_feedback(
            engine, tenant=principal.tenant, api_key_id=principal.api_key_id,
            request_id=request_id, score=spec.score, label=spec.label, comment=spec.comment,
        )
        return json_response(feedback_body(entry, spec.comment is not None),
                             200 if entry.replaced else 201)

    @app.post("/v1/batches/{batch_id}/feedback")
    async def batch_feedback(request: Request, batch_id: str) -> Response:
        principal = await authenticate(request, keys)
        spec = validate_body(BatchLineFeedback, await read_json_object(request, max_bytes))
        request_id = await batch_line_request(engine, principal.tenant, batch_id,
                                              spec.custom_id)
        if request_id is None:
            raise NotFound(f"No line with custom_id '{spec.custom_id}' in batch '{batch_id}'.")
        entry = await record_feedback(
            engine, tenant=principal.tenant, api_key_id=principal.api_key_id,
            request_id=request_id, score=spec.score, label=spec.label, comment=spec.comment,
            batch_id=batch_id, custom_id=spec.custom_id,
        )
        return json_response(feedback_body(entry, spec.comment is not None),
                             200 if entry.replaced else 201)

    @app.get("/v1/feedback")
    async def feedback_summary(request: Request) -> Response:
        tenant = (await authenticate(request, keys)).tenant
        query = request.query_params
        now = datetime.now(UTC)
        start = parse_time(query["from"], param="from") if "from" in query else now - timedelta(30)
        end = parse_time(query["to"], param="to") if "to" in query else now
        group_by = parse_feedback_group_by(query.get("group_by"))
        rows = await feedback_report(engine, start=start, end=end, group_by=group_by,
                                     tenant=tenant)
        return json_response({"object": "list", "group_by": list(group_by), "tenant": tenant,
                              "data": rows})
