"""`/v1/messages/batches`: Anthropic's Message Batches API over our batch machinery.

Creating one translates every request (a mistake is answered 400 naming
`requests[i].params...`), stores them as an OpenAI batch input file through the file
store (so the tenant's storage quota applies) and records a batch of endpoint
`/v1/chat/completions`: the tracker (`workers.batches`) validates, launches and finishes
it like any other. Results are read from its output and error files once it has ended.
Listing (both ways), retrieving, cancelling and deleting are the batch store's, rendered
as Anthropic's objects. Deleting an ended batch takes its results with it (and the input
file this door made for it); the ledger keeps what its requests cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from broker.batches import store
from broker.batches.files import FileRecord, FileStore
from broker.batches.lines import CHAT_ENDPOINT, LineSplitter
from broker.errors import InvalidRequest, NotFound
from ingress.access import batch_models
from ingress.anthropic.batch_objects import (
    REQUEST_COUNT,
    NewMessageBatch,
    batch_id,
    deleted_message_batch,
    input_file,
    made_here,
    message_batch,
    result_line,
    unanswered_line,
)
from ingress.anthropic.params import MessagesRequest
from ingress.anthropic.request import to_chat_request
from ingress.anthropic.routes import MessagesDoor, anthropic_errors
from ingress.body import read_json_object, validate_body
from ingress.envelope import json_response
from schemas import ChatCompletionRequest

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine


class MessageBatches:
    """The handlers, scoped to the caller's tenant (another tenant's batch is a 404)."""

    def __init__(self, door: MessagesDoor, engine: AsyncEngine):
        self.door = door
        self.engine = engine
        self.services = door.services
        self.files = FileStore(engine, door.services.batches)

    def results_url(self, request: Request) -> Callable[[str], str]:
        """Where a Message Batch's results are, by its public id."""
        base = (self.services.settings.public_url or str(request.base_url)).rstrip("/")
        return lambda public_id: f"{base}/v1/messages/batches/{public_id}/results"

    async def owned(self, request: Request, tenant: str) -> dict[str, Any]:
        """The tenant's batch named in the path (either id form), or `NotFound`."""
        public_id = request.path_params["batch_id"]
        batch = await store.get_batch(self.engine, tenant, batch_id(public_id))
        if batch is None:
            raise NotFound(f"No Message Batch found with id '{public_id}'.")
        return batch

    async def create(self, request: Request) -> Response:
        principal = await self.door.principal(request)
        data = await read_json_object(request, self.services.batches.batch_max_file_bytes)

        def translate(params: MessagesRequest) -> ChatCompletionRequest:
            # A model the key may not use is not refused here: the tracker answers that
            # request `errored`, and the others run.
            usable = params.model in self.services.config.models and principal.may_use(
                params.model)
            return to_chat_request(params, native=usable and self.door.native(params.model))

        def checked_input_file() -> tuple[int, bytes]:
            batch = validate_body(NewMessageBatch, data)
            if len(batch.requests) > self.services.batches.batch_max_lines:
                raise InvalidRequest("A batch takes at most "
                                     f"{self.services.batches.batch_max_lines} requests.",
                                     param="requests")
            return len(batch.requests), input_file(batch, translate)

        # Thousands of requests take a while to check and translate: not on the event loop.
        count, content = await asyncio.to_thread(checked_input_file)

        async def chunks() -> AsyncIterator[bytes]:
            yield content

        record = await self.files.upload(principal.tenant, "message_batch.jsonl",
                                         lambda: "batch", chunks())
        models = await batch_models(request, principal, self.services.config, "chat")
        created = await store.create_batch(
            self.engine, tenant=principal.tenant, api_key_id=principal.api_key_id,
            models=models, endpoint=CHAT_ENDPOINT, input_file_id=record.id, window="24h",
            metadata={REQUEST_COUNT: str(count)})
        return json_response(message_batch(created, self.results_url(request)))

    async def retrieve(self, request: Request) -> Response:
        tenant = (await self.door.principal(request)).tenant
        return json_response(message_batch(await self.owned(request, tenant),
                                           self.results_url(request)))

    async def cancel(self, request: Request) -> Response:
        tenant = (await self.door.principal(request)).tenant
        batch = await self.owned(request, tenant)
        await store.request_cancel(self.engine, tenant, batch["id"])
        return json_response(message_batch(await self.owned(request, tenant),
                                           self.results_url(request)))

    async def listing(self, request: Request) -> Response:
        """Newest first; `after_id` pages on to older batches, `before_id` back to newer."""
        tenant = (await self.door.principal(request)).tenant
        query = request.query_params
        after, before = query.get("after_id"), query.get("before_id")
        data, has_more = await store.list_batches(
            self.engine, tenant, batch_id(after) if after else None,
            _limit(query.get("limit")), before=batch_id(before) if before else None)
        render = self.results_url(request)
        shown = [message_batch(batch, render) for batch in data]
        return json_response({"data": shown, "has_more": has_more,
                              "first_id": shown[0]["id"] if shown else None,
                              "last_id": shown[-1]["id"] if shown else None})

    async def delete(self, request: Request) -> Response:
        """Forget an ended batch and its results; a batch still processing is refused."""
        tenant = (await self.door.principal(request)).tenant
        batch = await self.owned(request, tenant)
        if batch["endpoint"] != CHAT_ENDPOINT:
            raise InvalidRequest(f"The batch '{batch['id']}' runs {batch['endpoint']}, not "
                                 "messages; it is not a Message Batch to delete.")
        files = await store.delete_batch(self.engine, tenant, batch["id"],
                                         with_input_file=made_here(batch))
        if files is None:  # deleted by a concurrent call since we looked
            raise NotFound(f"No Message Batch found with id '{request.path_params['batch_id']}'.")
        # The rows are gone (and content kept in PostgreSQL with them); content on disk is
        # removed now, even if the caller hangs up meanwhile.
        await asyncio.shield(asyncio.gather(*(self.files.delete(file) for file in files)))
        return json_response(deleted_message_batch(batch))

    async def results(self, request: Request) -> Response:
        tenant = (await self.door.principal(request)).tenant
        batch = await self.owned(request, tenant)
        if batch["endpoint"] != CHAT_ENDPOINT:
            raise InvalidRequest(f"The batch '{batch['id']}' runs {batch['endpoint']}, not "
                                 "messages; read its output file at /v1/files instead.")
        if batch["status"] not in store.ENDED:
            raise InvalidRequest("This Message Batch is still processing; its results are "
                                 "available once its processing_status is 'ended'.")
        return StreamingResponse(self._result_lines(tenant, batch),
                                 media_type="application/x-jsonl")

    async def _result_lines(self, tenant: str, batch: dict[str, Any]) -> AsyncIterator[bytes]:
        seen: set[str] = set()
        for file_id in (batch["output_file_id"], batch["error_file_id"]):
            record = await self.files.get(tenant, file_id) if file_id else None
            if record is None:
                continue
            async for _, raw in self._lines(record):
                line = orjson.loads(raw)
                seen.add(str(line.get("custom_id")))
                yield result_line(line)
        if batch["status"] == "completed":  # every request has its line
            return
        # Requests that never got a line: the batch was refused whole, or cancelled or
        # expired before they were launched.
        record = await self.files.get(tenant, batch["input_file_id"])
        if record is None:
            return
        async for number, raw in self._lines(record):
            custom_id = orjson.loads(raw).get("custom_id")
            if isinstance(custom_id, str) and custom_id not in seen:
                yield unanswered_line(batch, custom_id, number)

    async def _lines(self, record: FileRecord) -> AsyncIterator[tuple[int, bytes]]:
        """A stored file's numbered lines as its chunks arrive (never the whole file)."""
        # An output line holds one answer, which was under the per-line cap on the way in
        # and under Kafka's message size on the way back.
        splitter = LineSplitter(self.services.batches.batch_max_line_bytes * 4)
        async for chunk in self.files.read(record):
            for number, raw in splitter.feed(chunk):
                if isinstance(raw, bytes):
                    yield number, raw
        for number, raw in splitter.end():
            if isinstance(raw, bytes):
                yield number, raw


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise InvalidRequest("limit must be an integer from 1 to 1000.", param="limit")
    return int(raw)


def register_message_batch_routes(app: FastAPI, door: MessagesDoor) -> None:
    """Add `/v1/messages/batches` (only when the edge has a database)."""
    if door.services.ledger is None:
        return
    batches = MessageBatches(door, door.services.ledger.engine)
    prefix = "/v1/messages/batches"
    app.router.routes.extend([
        Route(prefix, anthropic_errors(batches.create), methods=["POST"]),
        Route(prefix, anthropic_errors(batches.listing), methods=["GET"]),
        Route(prefix + "/{batch_id}", anthropic_errors(batches.retrieve), methods=["GET"]),
        Route(prefix + "/{batch_id}", anthropic_errors(batches.delete), methods=["DELETE"]),
        Route(prefix + "/{batch_id}/cancel", anthropic_errors(batches.cancel),
              methods=["POST"]),
        Route(prefix + "/{batch_id}/results", anthropic_errors(batches.results),
              methods=["GET"]),
    ])
