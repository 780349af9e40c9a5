"""The console's JSON endpoints under `/console/api/`.

Who sees what (the key or token in `Authorization: Bearer`):
- an admin (the admin key `SLUICE_ADMIN_KEY`, or an API key or OIDC token with the
  `admin` role) sees every tenant, and the operator's views that are not any one
  tenant's: queue depth, deployment budgets, workers and their breakers, dead letters
  (they hold other tenants' requests), and it alone may replay them;
- any other caller allowed to read usage (`member`, `tenant_admin`, `analyst`) sees its
  own tenant only: its throughput, failures and batches. Its keys are listed (read-only:
  minting and revoking stay at `/v1/admin/keys`) only to a caller who may manage them
  there (`tenant_admin`): members and analysts get 403 `insufficient_role`, as on
  `GET /v1/admin/keys`. Usage is `/v1/usage`, which already scopes a tenant caller to its
  tenant.
An operator view answers such a caller 403 `insufficient_role`, as `/v1/admin/*` does;
no credentials, 401.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from broker.budgets import DIMENSIONS, BucketState, PostgresBudgetStore
from broker.budgets.shapes import shape_of
from broker.budgets.store import describe
from broker.console.store import recent_batches, recent_failures, throughput
from broker.errors import AccessNotApproved, BrokerUnavailable, InvalidRequest
from broker.heartbeats.store import list_heartbeats
from broker.kafka import KafkaError, topics_for
from broker.kafka.dead_letters import find_dead_letters, read_dead_letters, replay
from broker.kafka.lag import consumer_lag
from broker.stores.keys import list_api_keys
from ingress.access import require_administrator
from ingress.admin import is_admin
from ingress.auth import admin_scope, authenticate, role_of
from ingress.body import read_json_object, validate_body
from ingress.envelope import json_response
from ingress.key_admin import key_body
from ingress.services import IngressServices
from schemas import Lane

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

# A worker whose heartbeat is older than this is shown stale (it beats every 5 s).
STALE_AFTER_S = 30.0
# Lag is read with fresh Kafka clients: several open consoles share one reading a while.
LAG_CACHE_S = 2.0
NO_STORE = {"cache-control": "no-store"}


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking: the admin (every tenant) or one tenant."""

    admin: bool
    tenant: str | None

    @property
    def scope(self) -> str | None:
        """The tenant to filter by; None for the admin (every tenant)."""
        return None if self.admin else self.tenant


class Replay(BaseModel):
    """Body of `POST /console/api/dead-letters/replay`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ids: Annotated[list[Annotated[str, Field(pattern=r"^\d+:\d+$")]],
                   Field(min_length=1, max_length=500)]


async def viewer_of(request: Request, services: IngressServices) -> Viewer:
    """The admin (the admin key or an `admin`-role caller), or the tenant of any other
    valid caller; `AuthenticationFailed` or `AccessNotApproved` from `authenticate`."""
    if is_admin(request, services):
        return Viewer(admin=True, tenant=None)
    principal = await authenticate(request, services.api_keys)
    if role_of(principal) == "admin":
        return Viewer(admin=True, tenant=None)
    return Viewer(admin=False, tenant=principal.tenant)


async def key_manager_of(request: Request, services: IngressServices) -> Viewer:
    """Who may list keys, as `GET /v1/admin/keys` decides: the admin (every tenant), or a
    caller allowed to manage keys (`tenant_admin`) for its own tenant. Key lists name
    every key's id, prefix, role and IP lists: members and analysts get 403
    `insufficient_role`, as on the admin route."""
    scope = await admin_scope(request, services.api_keys,
                              admin_key=is_admin(request, services), permission="manage_keys")
    return Viewer(admin=scope is None, tenant=scope)


async def _lists_keys(request: Request, services: IngressServices) -> bool:
    try:
        await key_manager_of(request, services)
    except AccessNotApproved:
        return False
    return True


async def admin_of(request: Request, services: IngressServices) -> Viewer:
    """The admin; 401 without credentials, 403 `insufficient_role` for other roles."""
    await require_administrator(request, services)
    return Viewer(admin=True, tenant=None)


def _reply(body: dict[str, Any], status: int = 200) -> Response:
    return json_response(body, status, headers=NO_STORE)


class QueueDepths:
    """The workers' consumer lag per model and lane, read at most every `LAG_CACHE_S`."""

    def __init__(self, services: IngressServices) -> None:
        self._services = services
        self._read_at = 0.0
        self._last: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()

    async def read(self) -> list[dict[str, Any]]:
        """One row per model and lane: topic, group, lag (records not yet committed)."""
        async with self._lock:
            if time.monotonic() - self._read_at >= LAG_CACHE_S:
                self._last = await self._measure()
                self._read_at = time.monotonic()
        return self._last

    async def _measure(self) -> list[dict[str, Any]]:
        kafka = self._services.kafka
        topics = topics_for(kafka)
        lanes: dict[str, tuple[str, Lane]] = {}
        groups: dict[str, str] = {}
        for model in self._services.config.models:
            for lane in Lane:
                group = topics.worker_group(model, lane)
                groups[group] = topics.requests(model, lane)
                lanes[group] = (model, lane)
        try:
            lags = await consumer_lag(kafka, groups)
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read consumer lag from Kafka: {exc}") from exc
        return [{"model": lanes[lag.group][0], "lane": lanes[lag.group][1].value,
                 "topic": lag.topic, "group": lag.group, "partitions": lag.partitions,
                 "end": lag.end, "committed": lag.committed, "lag": lag.lag} for lag in lags]


def register_console_api(app: FastAPI, services: IngressServices) -> None:
    """Add `/console/api/*` (only when the edge has the ledger database)."""
    if services.ledger is None:
        return
    engine: AsyncEngine = services.ledger.engine
    depths = QueueDepths(services)
    budgets = PostgresBudgetStore(engine)

    @app.get("/console/api/me", include_in_schema=False)
    async def me(request: Request) -> Response:
        viewer = await viewer_of(request, services)
        return _reply({"admin": viewer.admin, "tenant": viewer.tenant,
                       # The page shows the key list only to whom `/console/api/keys` answers.
                       "lists_keys": viewer.admin or await _lists_keys(request, services),
                       "models": sorted(services.config.models),
                       "usage_url": "/v1/usage"})

    @app.get("/console/api/throughput", include_in_schema=False)
    async def throughput_route(request: Request) -> Response:
        viewer = await viewer_of(request, services)
        minutes = _bounded(request.query_params.get("minutes"), 15, 1, 180, "minutes")
        now, rows = await throughput(engine, viewer.scope, minutes)
        return _reply({"object": "list", "now": now.isoformat(), "minutes": minutes,
                       "data": rows})

    @app.get("/console/api/queues", include_in_schema=False)
    async def queues(request: Request) -> Response:
        await admin_of(request, services)
        return _reply({"object": "list", "data": await depths.read()})

    @app.get("/console/api/budgets", include_in_schema=False)
    async def budgets_route(request: Request) -> Response:
        await admin_of(request, services)
        data = []
        for name, deployment in sorted(services.config.deployments.items()):
            shape = shape_of(deployment)
            if not shape.limited:
                continue
            state = await budgets.snapshot(name, shape)
            if state.get("state") == "unused":  # no call yet: full buckets, as configured
                now = time.time()
                full = BucketState(updated_at=now, scale_at=now, levels=list(shape.limits))
                state = describe(shape, full, now) | {"state": "unused"}
            for dimension in DIMENSIONS:  # what a bucket holds at most (the gauge's 100 %)
                if dimension in state:
                    state[dimension]["capacity"] = round(
                        shape.burst * state[dimension]["limit"], 2)
            data.append({"deployment": name, "model": deployment.model, **state})
        return _reply({"object": "list", "data": data})

    @app.get("/console/api/workers", include_in_schema=False)
    async def workers(request: Request) -> Response:
        await admin_of(request, services)
        data = [{"worker_id": beat.worker_id, "host": beat.host, "pid": beat.pid,
                 "models": beat.models, "ready": beat.state.get("ready"),
                 "in_flight": beat.state.get("in_flight"),
                 "breakers": beat.state.get("breakers", {}),
                 "started_at": beat.started_at.isoformat(), "age_s": round(beat.age_s, 1),
                 "stale": beat.age_s > STALE_AFTER_S}
                for beat in await list_heartbeats(engine)]
        return _reply({"object": "list", "stale_after_s": STALE_AFTER_S, "data": data})

    @app.get("/console/api/failures", include_in_schema=False)
    async def failures(request: Request) -> Response:
        viewer = await viewer_of(request, services)
        return _reply({"object": "list", "data": await recent_failures(engine, viewer.scope)})

    @app.get("/console/api/batches", include_in_schema=False)
    async def batches(request: Request) -> Response:
        viewer = await viewer_of(request, services)
        return _reply({"object": "list", "data": await recent_batches(engine, viewer.scope)})

    @app.get("/console/api/keys", include_in_schema=False)
    async def keys(request: Request) -> Response:
        viewer = await key_manager_of(request, services)
        tenant = request.query_params.get("tenant") if viewer.admin else viewer.tenant
        found = await list_api_keys(engine, tenant)
        return _reply({"object": "list", "may_manage": viewer.admin,
                       "data": [key_body(key) for key in found]})

    @app.get("/console/api/dead-letters", include_in_schema=False)
    async def dead_letters(request: Request) -> Response:
        await admin_of(request, services)
        limit = _bounded(request.query_params.get("limit"), 50, 1, 500, "limit")
        try:
            entries = await read_dead_letters(services.kafka, limit)
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read the dead-letter topic: {exc}") from exc
        return _reply({"object": "list",
                       "data": [entry.summary() for entry in reversed(entries)]})

    @app.post("/console/api/dead-letters/replay", include_in_schema=False)
    async def dead_letters_replay(request: Request) -> Response:
        await admin_of(request, services)
        spec = validate_body(Replay, await read_json_object(
            request, services.settings.max_body_bytes))
        try:
            sent = await replay(services.kafka,
                                await find_dead_letters(services.kafka, set(spec.ids)))
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot replay dead letters: {exc}") from exc
        return _reply({"object": "replay", "replayed": sent, "ids": sorted(spec.ids)})


def _bounded(raw: str | None, default: int, low: int, high: int, param: str) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"{param} must be an integer from {low} to {high}.", param=param)
    return int(raw)
