"""The FastAPI application: OpenAI-compatible chat completions, async requests, models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from broker.asyncapi import asyncapi_document
from broker.config import ModelKind
from broker.errors import InvalidRequest, NotFound, SluiceError, UnknownModel
from broker.kafka import topics_for
from broker.routing import resolve_alias, shadow_copy, with_variant
from ingress.access import access_gate, register_access_routes
from ingress.admin import register_ledger_routes
from ingress.anthropic import register_anthropic_routes
from ingress.auth import authenticate
from ingress.batches import register_batch_routes
from ingress.body import read_json_object, validate_body
from ingress.cache import ResponseCache
from ingress.console import register_console_routes
from ingress.envelope import error_body, install_error_handlers, json_response
from ingress.feedback import register_feedback_routes
from ingress.health import ingress_readiness, register_health_routes
from ingress.login_throttle import LoginThrottle
from ingress.metrics import register_metrics_route
from ingress.polling import LongPolls, parse_wait, wait_until_final
from ingress.publisher import RequestPublisher
from ingress.rendering import completion_body, failure, request_state
from ingress.replies import ReplyListener
from ingress.services import IngressServices, Principal, RecentlyAccepted
from ingress.streaming import StreamEvents, stream_events
from ingress.templates import register_template_routes
from ingress.tracing import describe_request, traced_route
from ingress.webhooks import WebhookIntake
from schemas import (
    ChatCompletionRequest,
    EmbeddingRequest,
    InferenceRequest,
    InferenceResult,
    RequestStatus,
    StreamChunk,
)
from schemas.caching import CacheTicket
from schemas.messages import CancelRequested

log = logging.getLogger("sluice.ingress")


class Ingress:
    """Request handling, separate from FastAPI wiring so each route stays a few lines."""

    def __init__(self, services: IngressServices):
        self.services = services
        self.publisher = RequestPublisher(services.kafka)
        self.replies = ReplyListener(services.kafka, services.ingress_id(),
                                     temporary=services.settings.ingress_id is None)
        self.accepted = RecentlyAccepted()
        self.long_polls = LongPolls(services.settings.max_long_polls_per_tenant)
        self.webhooks = WebhookIntake(services)  # X-Webhook-URL and /v1/webhooks/*
        self.access = access_gate(services)  # README "Access approval"
        # Answers repeated chat requests before admission and Kafka (README "Caching").
        self.cache = ResponseCache(services.config,
                                   services.ledger.engine if services.ledger else None)
        self.started = int(time.time())
        self._asyncapi: dict[str, Any] | None = None
        self._background: set[asyncio.Task[None]] = set()

    def status_url(self, request: Request, request_id: str) -> str:
        base = self.services.settings.public_url or str(request.base_url)
        return f"{base.rstrip('/')}/v1/requests/{request_id}"

    async def accept(self, request: Request, *, wait: bool,
                     kind: ModelKind | None = "chat") -> tuple[Principal, InferenceRequest]:
        """Authenticate, validate and admit a request; `kind` None: tell it by its body."""
        principal, body = await self.receive(request, kind=kind)
        return principal, await self.admit(request, principal, body, wait=wait)

    async def receive(self, request: Request, *, kind: ModelKind | None
                      ) -> tuple[Principal, ChatCompletionRequest | EmbeddingRequest]:
        """Authenticate and validate a request; `kind` None: tell it by its body."""
        principal = await authenticate(request, self.services.api_keys)
        data = await read_json_object(request, self.services.settings.max_body_bytes)
        if kind is None:
            kind = "embedding" if "input" in data and "messages" not in data else "chat"
        body: ChatCompletionRequest | EmbeddingRequest
        if kind == "chat":
            body = validate_body(ChatCompletionRequest, data)
        else:
            body = validate_body(EmbeddingRequest, data)
        return principal, body

    async def admit(self, request: Request, principal: Principal,
                    body: ChatCompletionRequest | EmbeddingRequest, *,
                    wait: bool, cache: CacheTicket | None = None) -> InferenceRequest:
        """The queued form of an already parsed `body`, admitted for `principal` (model
        checks, deadline, webhook, limits); published by `publish`."""
        kind = "chat" if isinstance(body, ChatCompletionRequest) else "embedding"
        # An alias is served by the model it names; a key may use it when it lists either.
        served = resolve_alias(self.services.config, body.model)
        model = self.services.config.models.get(served)
        if model is None or not (principal.may_use(body.model) or principal.may_use(served)):
            raise UnknownModel(body.model)  # 404 for a key's unlisted model: no existence leak
        if model.kind != kind:
            route = "/v1/embeddings" if model.kind == "embedding" else "/v1/chat/completions"
            raise InvalidRequest(f"The model '{body.model}' is an {model.kind} model; call it "
                                 f"at {route}.", param="model", code="wrong_model_kind")
        await self._require_access(principal, served)
        now = datetime.now(UTC)
        request_id = f"req_{uuid.uuid4().hex}"
        inference = InferenceRequest(
            id=request_id,
            model=served,
            body=body,
            tenant=principal.tenant,
            api_key_id=principal.api_key_id,
            created_at=now,
            deadline=_deadline(request, now),
            reply_to=self.replies.topic if wait else None,
            correlation_id=request_id,
            webhook_url=await self.webhooks.from_header(request, principal.tenant),
            cache=cache,  # where the ledger keeps the answer (README "Caching")
            requested_model=body.model if served != body.model else None,
            # The model's and then the key's guardrail policies (README "Guardrails"):
            # workers apply them; the ledger masks a screened request's stored prompt.
            guardrails=list(dict.fromkeys([*model.guardrails, *(principal.guardrails or ())]))
            or None,
        )
        inference = with_variant(model.routing, inference)  # A/B or canary (broker/routing)
        if self.services.admission is not None:  # last: a refused request counts nothing
            await self.services.admission.admit(principal, inference)
        return inference

    async def _require_access(self, principal: Principal, name: str) -> None:
        """403 until an admin approved, for a model that requires it (README "Access
        approval"); `name` may be an alias."""
        served = resolve_alias(self.services.config, name)
        model = self.services.config.models.get(served)
        if not (principal.may_use(name) or principal.may_use(served)):
            return  # `admit` answers 404 model_not_found: a 403 would name the model
        if model is not None and model.requires_approval:
            await self.access.require(principal.tenant, principal.api_key_id, f"model:{served}")

    async def publish(self, request: Request, inference: InferenceRequest) -> None:
        try:
            describe_request(inference)  # on the server span and the log lines
            await self.publisher.publish(inference)
        except SluiceError:
            if self.services.admission is not None:  # not queued: give its hold back
                with contextlib.suppress(SluiceError):
                    await self.services.admission.release(inference.id)
            raise
        self._mirror(inference)

    def _mirror(self, inference: InferenceRequest) -> None:
        """Publish the request's shadow copy, if it is one of its model's mirrored share
        (broker/routing/shadow.py), in the background: the caller never waits for it."""
        model = self.services.config.models.get(inference.model)
        copy = shadow_copy(model.routing, inference, datetime.now(UTC)) if model else None
        if copy is None:
            return

        async def publish_copy() -> None:
            try:
                await self.publisher.publish(copy)
            except SluiceError as exc:  # a lost copy is a lost comparison, never an error
                log.warning("shadow copy of %s not published: %s", inference.id, exc)

        task = asyncio.create_task(publish_copy())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def chat_completions(self, request: Request) -> Response:
        wait = "respond-async" not in request.headers.get("prefer", "").lower()
        principal, body = await self.receive(request, kind="chat")
        assert isinstance(body, ChatCompletionRequest)
        # A cache hit is answered here: no admission, no Kafka, no provider call; but only
        # to a caller the model would answer (a denied approval is not served from cache).
        await self._require_access(principal, body.model)
        cached = await self.cache.lookup(request, principal, body, answer=wait)
        if cached.response is not None:
            return cached.response
        inference = await self.admit(request, principal, body, wait=wait, cache=cached.ticket)
        if not wait:
            await self.publish(request, inference)
            return cached.mark(self._accepted(request, inference))
        if body.stream:
            return cached.mark(await self._stream(request, inference))
        return cached.mark(await self._answer(request, inference))

    async def embeddings(self, request: Request) -> Response:
        """`POST /v1/embeddings`: queued like chat, answered when final (or 202 async)."""
        wait = "respond-async" not in request.headers.get("prefer", "").lower()
        _, inference = await self.accept(request, wait=wait, kind="embedding")
        if not wait:
            await self.publish(request, inference)
            return self._accepted(request, inference)
        return await self._answer(request, inference)

    async def final_result(self, request: Request,
                           inference: InferenceRequest) -> InferenceResult | None:
        """Publish, then the final result; None when none came within `sync_timeout_s`
        (the request goes on, and its status URL will have the answer)."""
        waiter = self.replies.expect(inference.id)
        try:
            await self.publish(request, inference)
            return await asyncio.wait_for(waiter, self.services.settings.sync_timeout_s)
        except TimeoutError:
            return None
        finally:
            self.replies.forget(inference.id)

    async def _answer(self, request: Request, inference: InferenceRequest) -> Response:
        """Publish, then answer with the final result, or 504 with a status URL."""
        result = await self.final_result(request, inference)
        if result is None:
            return self._still_running(request, inference)
        headers = {"x-request-id": inference.id}
        if result.status is RequestStatus.SUCCEEDED and result.completion is not None:
            return json_response(completion_body(result), headers=headers)
        status, body = failure(result)
        return json_response(body, status, headers=headers)

    async def _stream(self, request: Request, inference: InferenceRequest) -> Response:
        """Answer with server-sent events once the first chunk (or the end) arrives.

        Until the first chunk the request may still fail over or fail whole, and then the
        client gets a plain error response with its status code, as without streaming.
        """
        opened = await self.open_stream(request, inference)
        if opened is None:
            return self._still_running(request, inference)
        first, events = opened
        headers = {"x-request-id": inference.id, "cache-control": "no-cache"}
        if isinstance(first, InferenceResult):  # ended before its first chunk
            if first.status is RequestStatus.SUCCEEDED and first.completion is not None:
                return json_response(completion_body(first), headers=headers)
            status, body = failure(first)
            return json_response(body, status, headers=headers)
        sse = stream_events(inference, first, events,
                            idle_timeout_s=self.services.settings.sync_timeout_s,
                            status_url=self.status_url(request, inference.id),
                            on_end=self.stream_ended(inference))
        return StreamingResponse(sse, media_type="text/event-stream", headers=headers)

    async def open_stream(self, request: Request, inference: InferenceRequest
                          ) -> tuple[StreamChunk | InferenceResult, StreamEvents] | None:
        """Publish a streamed request, then its first chunk (or its final result, when it
        ended before one) and the queue the rest arrives on; None when neither came within
        `sync_timeout_s` (the request is then cancelled). After a chunk, the caller reads
        the queue and calls `stream_ended(inference)` however its stream ends."""
        events = self.replies.expect_stream(inference.id)
        try:
            await self.publish(request, inference)
            first = await asyncio.wait_for(events.get(), self.services.settings.sync_timeout_s)
        except TimeoutError:
            self.replies.forget_stream(inference.id)
            self._cancel_later(inference)
            return None
        except BaseException:
            self.replies.forget_stream(inference.id)
            raise
        if isinstance(first, InferenceResult):
            self.replies.forget_stream(inference.id)
        return first, events

    def stream_ended(self, inference: InferenceRequest) -> Callable[[bool], None]:
        """The `on_end(finished)` of a stream: stop listening, and cancel the provider
        call when the stream did not finish (the client left, or the answer stalled)."""

        def on_end(finished: bool) -> None:
            self.replies.forget_stream(inference.id)
            if not finished:
                self._cancel_later(inference)

        return on_end

    def _cancel_later(self, inference: InferenceRequest) -> None:
        """Ask the worker to stop a request whose client left (from a cleanup path that
        may itself be cancelled, so in a task of its own)."""
        cancel = CancelRequested(request_id=inference.id, tenant=inference.tenant,
                                 requested_at=datetime.now(UTC))
        task = asyncio.create_task(self.publisher.publish_cancel(cancel))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def submit(self, request: Request) -> Response:
        _, inference = await self.accept(request, wait=False, kind=None)
        await self.publish(request, inference)
        return self._accepted(request, inference)

    def _accepted(self, request: Request, inference: InferenceRequest) -> Response:
        self.accepted.remember(inference.id, inference.tenant, inference.model)
        body = {
            "id": inference.id,
            "object": "request",
            "status": RequestStatus.QUEUED.value,
            "status_url": self.status_url(request, inference.id),
        }
        return json_response(body, 202, headers={"Location": body["status_url"]})

    def _still_running(self, request: Request, inference: InferenceRequest) -> Response:
        self.accepted.remember(inference.id, inference.tenant, inference.model)
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
        wait_s = parse_wait(request.query_params.get("wait"))
        recent_tenant = (self.accepted.lookup(request_id) or ("", ""))[0]
        if wait_s and recent_tenant not in ("", principal.tenant):
            wait_s = 0.0  # someone else's id: answer 404 now, without waiting
        with self.long_polls.slot(principal.tenant) as may_wait:
            stored = await wait_until_final(
                self.services.requests, request_id, principal.tenant,
                wait_s if may_wait else 0.0, accepted_here=recent_tenant == principal.tenant,
                announcements=self.services.announcements,
            )
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

    async def cancel(self, request: Request, request_id: str) -> Response:
        """Ask workers to answer a not-yet-started request `cancelled` (a started one ends)."""
        principal = await authenticate(request, self.services.api_keys)
        url = self.status_url(request, request_id)
        stored = await self.services.requests.find(request_id)
        recent = self.accepted.lookup(request_id)
        if stored is not None and stored.tenant == principal.tenant:
            if stored.status != RequestStatus.QUEUED.value:  # final already: nothing to do
                return json_response(request_state(
                    stored.id, stored.status, stored.model, stored.created_at,
                    stored.finished_at, stored.result, url))
            model = stored.model
        elif stored is None and recent is not None and recent[0] == principal.tenant:
            model = recent[1]
        else:
            raise NotFound(f"No request with id '{request_id}'.")
        await self.publisher.publish_cancel(CancelRequested(
            request_id=request_id, tenant=principal.tenant, requested_at=datetime.now(UTC)))
        body = request_state(request_id, RequestStatus.QUEUED.value, model, None, None, None, url)
        body["cancel_requested"] = True
        return json_response(body, 202, headers={"Location": url})

    def asyncapi(self) -> dict[str, Any]:
        """The AsyncAPI document of this deployment's topics (built once, on first ask)."""
        if self._asyncapi is None:
            self._asyncapi = asyncapi_document(
                topics_for(self.services.kafka), self.services.config.models,
                bootstrap=self.services.kafka.kafka_bootstrap,
            )
        return self._asyncapi

    async def models(self, request: Request) -> Response:
        principal = await authenticate(request, self.services.api_keys)
        # A key limited to some models sees only those: the others answer 404 as if they
        # did not exist, so listing them would leak what the key may not use.
        config = self.services.config
        data = [
            {"id": name, "object": "model", "created": self.started, "owned_by": "sluicegate"}
            for name in [*config.models, *config.aliases]
            if principal.may_use(name) or principal.may_use(resolve_alias(config, name))
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
        announcements = services.announcements
        if announcements is not None:
            await announcements.start()
        await ingress.replies.start()
        await ingress.publisher.start()
        if ingress.publisher.ready:  # with Kafka away we serve 503s instead of waiting
            await ingress.replies.wait_ready(10.0)
        try:
            yield
        finally:  # also when the app's host fails (a test's body raising inside it)
            await ingress.publisher.stop()
            await ingress.cache.close()  # hits answered but not yet recorded
            await ingress.replies.stop()
            if announcements is not None:
                await announcements.stop()

    # FastAPI's native OpenTelemetry hook probes the environment on every request (7% of
    # ingress CPU in the profile) although no OpenTelemetry provider is configured.
    # No /docs, /redoc or /openapi.json: the API is OpenAI's (README), and generated
    # pages would describe internal routes to anyone without a key.
    app = FastAPI(
        title="sluicegate", version="0.1.0", lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
        openapi_url=None, docs_url=None, redoc_url=None,
    )
    app.state.ingress = ingress
    app.state.login_throttle = LoginThrottle()  # read by `authenticate`
    install_error_handlers(app)
    register_ledger_routes(app, services)
    register_access_routes(app, services, ingress.access)  # /v1/admin/access, /v1/access/*
    ingress.webhooks.register(app)
    register_batch_routes(app, services)  # /v1/files and /v1/batches (OpenAI Batch API)
    register_feedback_routes(app, services)  # feedback on answers (ingress/feedback.py)
    register_console_routes(app, services)  # /console: the page and /console/api/*
    register_metrics_route(app, services)  # /metrics for Prometheus (ingress/metrics.py)

    # The two routes every request takes (POST path -> handler). uvicorn serves them
    # through `ingress.hot_routes`, past the middleware below; here they are plain
    # Starlette routes for wherever the app is mounted as it is: they read the raw request
    # and return a ready Response, so FastAPI's dependency solving and response handling
    # would only add CPU (a quarter of the ingress's, profiled at 64 callers). Errors still
    # reach the handlers above: exception middleware wraps every route. They go first in
    # the routing table, which is scanned in order for every request.
    app.state.hot_routes = {path: traced_route(path, endpoint) for path, endpoint in {
        "/v1/chat/completions": ingress.chat_completions,
        "/v1/embeddings": ingress.embeddings,
        "/v1/requests": ingress.submit,
    }.items()}  # each in a server span (ingress/tracing.py)
    app.router.routes[:0] = [
        Route(path, endpoint, methods=["POST"])
        for path, endpoint in app.state.hot_routes.items()
    ]
    register_anthropic_routes(app, ingress)  # /v1/messages* (Anthropic's Messages API)
    register_template_routes(app, ingress)  # /v1/templates/*, /v1/admin/templates

    @app.get("/v1/requests/{request_id}")
    async def request_status(request: Request, request_id: str) -> Response:
        return await ingress.request_status(request, request_id)

    @app.post("/v1/requests/{request_id}/cancel")
    async def cancel(request: Request, request_id: str) -> Response:
        return await ingress.cancel(request, request_id)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await ingress.models(request)

    @app.get("/asyncapi.json")
    async def asyncapi(request: Request) -> Response:
        # It names the Kafka bootstrap address and every topic: for key holders only.
        await authenticate(request, services.api_keys)
        return json_response(ingress.asyncapi())

    # /livez and /readyz (ingress/health.py): Kafka both ways and PostgreSQL.
    register_health_routes(app, ingress_readiness(
        ingress.publisher, ingress.replies,
        services.ledger.engine if services.ledger is not None else None))

    @app.get("/health")
    async def health() -> Response:
        ready = ingress.publisher.ready
        return json_response({"status": "ok" if ready else "degraded", "kafka": ready},
                             200 if ready else 503)

    return app
