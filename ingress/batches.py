"""`/v1/batches` (and `/v1/files`): OpenAI's Batch API at the edge.

Creating a batch only records it (`validating`) after checking its input file, endpoint and
window; the batch tracker (`workers.batches`, inside `sluice ledger`) validates every line,
publishes them to the batch lane and writes the output and error files. Cancelling moves
the batch to `cancelling`; the tracker sends the cancellations. Everything is scoped to the
caller's tenant: another tenant's batch or file id answers 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from broker.batches import store
from broker.batches.files import FileStore
from broker.batches.lines import ENDPOINT_KINDS
from broker.errors import InvalidRequest, NotFound
from ingress.access import batch_models
from ingress.auth import authenticate
from ingress.body import read_json_object, validate_body
from ingress.envelope import json_response
from ingress.files import register_file_routes
from ingress.services import IngressServices

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine



class NewBatch(BaseModel):
    """Body of `POST /v1/batches`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_file_id: Annotated[str, Field(min_length=1, max_length=200)]
    endpoint: str
    completion_window: Literal["24h"]
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidRequest("limit must be an integer from 1 to 100.", param="limit")
    return int(raw)


def register_batch_routes(app: FastAPI, services: IngressServices) -> None:
    """Add `/v1/files` and `/v1/batches` (only when the edge has a database)."""
    if services.ledger is None:
        return
    engine: AsyncEngine = services.ledger.engine
    keys = services.api_keys
    files = FileStore(engine, services.batches)
    register_file_routes(app, keys, files)

    async def owned(request: Request, batch_id: str) -> tuple[str, dict[str, object]]:
        tenant = (await authenticate(request, keys)).tenant
        batch = await store.get_batch(engine, tenant, batch_id)
        if batch is None:
            raise NotFound(f"No batch found with id '{batch_id}'.")
        return tenant, batch

    @app.post("/v1/batches")
    async def batches_create(request: Request) -> Response:
        principal = await authenticate(request, keys)
        spec = validate_body(NewBatch, await read_json_object(
            request, services.settings.max_body_bytes))
        kind = ENDPOINT_KINDS.get(spec.endpoint)
        if kind is None:
            raise InvalidRequest(f"Unsupported endpoint '{spec.endpoint}'; batches support "
                                 f"{' and '.join(ENDPOINT_KINDS)}.", param="endpoint")
        record = await files.get(principal.tenant, spec.input_file_id)
        if record is None:
            raise NotFound(f"No such File object: {spec.input_file_id}")
        if record.purpose != "batch":
            raise InvalidRequest("The input file must have purpose 'batch'.",
                                 param="input_file_id")
        # Lines may name the models this key may use that answer the batch's endpoint.
        models = await batch_models(request, principal, services.config, kind)
        batch = await store.create_batch(
            engine, tenant=principal.tenant, api_key_id=principal.api_key_id, models=models,
            endpoint=spec.endpoint, input_file_id=record.id, window=spec.completion_window,
            metadata=spec.metadata)
        return json_response(batch)

    @app.get("/v1/batches/{batch_id}")
    async def batches_retrieve(request: Request, batch_id: str) -> Response:
        return json_response((await owned(request, batch_id))[1])

    @app.get("/v1/batches")
    async def batches_list(request: Request) -> Response:
        tenant = (await authenticate(request, keys)).tenant
        data, has_more = await store.list_batches(
            engine, tenant, request.query_params.get("after"),
            _limit(request.query_params.get("limit")))
        return json_response({
            "object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more})

    @app.post("/v1/batches/{batch_id}/cancel")
    async def batches_cancel(request: Request, batch_id: str) -> Response:
        tenant, _ = await owned(request, batch_id)
        await store.request_cancel(engine, tenant, batch_id)
        return json_response((await owned(request, batch_id))[1])
