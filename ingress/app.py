"""The FastAPI application: OpenAI-compatible chat completions, async requests, models."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import InvalidRequest, NotFound, UnknownModel
from ingress.auth import authenticate
from ingress.body import read_json_object, validate_body
from ingress.envelope import error_body, install_error_handlers, json_response
from ingress.publisher import RequestPublisher
from ingress.rendering import completion_body, failure, request_state
from ingress.replies import ReplyListener
from ingress.services import IngressServices, Principal, RecentlyAccepted
from schemas import ChatCompletionRequest, InferenceRequest, RequestStatus


class Ingress:
    """Request handling, separate from FastAPI wiring so each route stays a few lines."""

    def __init__(self, services: IngressServices):
        self.services = services
        self.publisher = RequestPublisher(services.kafka)
        self.replies = ReplyListener(services.kafka, services.ingress_id())
        self.accepted = RecentlyAccepted()
        self.started = int(time.time())

    def status_url(self, request: Request, request_id: str) -> str:
        base = self.services.settings.public_url or str(request.base_url)
        return f"{base.rstrip('/')}/v1/requests/{request_id}"

    async def accept(self, request: Request, *, wait: bool) -> tuple[Principal, InferenceRequest]:
        principal = await authenticate(request, self.services.api_keys)
        data = await read_json_object(request, self.services.settings.max_body_bytes)
        body = validate_body(ChatCompletionRequest, data)
        if body.model not in self.services.config.models:
            raise UnknownModel(body.model)
        now = datetime.now(UTC)
        request_id = f"req_{uuid.uuid4().hex}"
        inference = InferenceRequest(
            id=request_id,
            model=body.model,
            body=body,
            tenant=principal.tenant,
            api_key_id=principal.api_key_id,
            created_at=now,
            deadline=_deadline(request, now),
            reply_to=self.replies.topic if wait else None,
            correlation_id=request_id,
        )
        return principal, inference

    async def publish(self, request: Request, inference: InferenceRequest) -> None:
        await self.publisher.publish(inference, request.headers.get("traceparent"))
        self.accepted.remember(inference.id, inference.tenant, inference.model)

    async def chat_completions(self, request: Request) -> Response:
        wait = "respond-async" not in request.headers.get("prefer", "").lower()
        _, inference = await self.accept(request, wait=wait)
        if not wait:
            await self.publish(request, inference)
            return self._accepted(request, inference)
        waiter = self.replies.expect(inference.id)
        try:
            await self.publish(request, inference)
            result = await asyncio.wait_for(waiter, self.services.settings.sync_timeout_s)
        except TimeoutError:
            return self._still_running(request, inference)
        finally:
            self.replies.forget(inference.id)
        headers = {"x-request-id": inference.id}
        if result.status is RequestStatus.SUCCEEDED and result.completion is not None:
            return json_response(completion_body(result), headers=headers)
        status, body = failure(result)
        return json_response(body, status, headers=headers)

    async def submit(self, request: Request) -> Response:
        _, inference = await self.accept(request, wait=False)
        await self.publish(request, inference)
        return self._accepted(request, inference)

    def _accepted(self, request: Request, inference: InferenceRequest) -> Response:
        body = {
            "id": inference.id,
            "object": "request",
            "status": RequestStatus.QUEUED.value,
            "status_url": self.status_url(request, inference.id),
        }
        return json_response(body, 202, headers={"Location": body["status_url"]})

    def _still_running(self, request: Request, inference: InferenceRequest) -> Response:
        url = self.status_url(request, inference.id)
        body = error_body(
            f"No answer within {self.services.settings.sync_timeout_s:g}s; the request is still "
            f"being processed. Poll GET {url} for its result.",
            "timeout",
            code="request_pending",
        )
        body.update(id=inference.id, status_url=url)
        return json_response(body, 504, headers={"Location": url, "x-request-id": inference.id})

    async def request_status(self, request: Request, request_id: str) -> Response:
        principal = await authenticate(request, self.services.api_keys)
        url = self.status_url(request, request_id)
        stored = await self.services.requests.find(request_id)
        if stored is not None and stored.tenant == principal.tenant:
            return json_response(request_state(
                stored.id, stored.status, stored.model, stored.created_at, stored.finished_at,
                stored.result, url,
            ))
        recent = self.accepted.lookup(request_id)
        if stored is None and recent is not None and recent[0] == principal.tenant:
            return json_response(request_state(
                request_id, RequestStatus.QUEUED.value, recent[1], None, None, None, url,
            ))
        raise NotFound(f"No request with id '{request_id}'.")

    async def models(self, request: Request) -> Response:
        await authenticate(request, self.services.api_keys)
        data = [
            {"id": name, "object": "model", "created": self.started, "owned_by": "sluicegate"}
            for name in self.services.config.models
        ]
        return json_response({"object": "list", "data": data})


def _deadline(request: Request, now: datetime) -> datetime | None:
    raw = request.headers.get("x-request-timeout")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 7 * 24 * 3600:
        raise InvalidRequest(
            "X-Request-Timeout must be a number of seconds between 0 and 604800.",
            param="X-Request-Timeout",
        )
    return now + timedelta(seconds=seconds)


def create_app(services: IngressServices) -> FastAPI:
    """The ingress application; Kafka connections open and close with its lifespan."""
    ingress = Ingress(services)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ingress.replies.start()
        await ingress.publisher.start()
        if ingress.publisher.ready:  # with Kafka away we serve 503s instead of waiting
            await ingress.replies.wait_ready(10.0)
        yield
        await ingress.publisher.stop()
        await ingress.replies.stop()

    app = FastAPI(title="sluicegate", version="0.1.0", lifespan=lifespan)
    app.state.ingress = ingress
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await ingress.chat_completions(request)

    @app.post("/v1/requests")
    async def submit(request: Request) -> Response:
        return await ingress.submit(request)

    @app.get("/v1/requests/{request_id}")
    async def request_status(request: Request, request_id: str) -> Response:
        return await ingress.request_status(request, request_id)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await ingress.models(request)

    @app.get("/health")
    async def health() -> Response:
        ready = ingress.publisher.ready
        return json_response({"status": "ok" if ready else "degraded", "kafka": ready},
                             200 if ready else 503)

    return app
