"""Access approval over HTTP (README "Access approval"): admins decide, tenant keys ask.

    POST /v1/admin/access                 {resource, tenant, key_id?, reason}  (admin key)
    POST /v1/admin/access/{id}/approve    {reason?}                            (admin key)
    POST /v1/admin/access/{id}/deny       {reason?}                            (admin key)
    GET  /v1/admin/access?pending=true&tenant=T                                (admin key)
    POST /v1/access/requests              {resource, reason, scope?}           (tenant key)
    GET  /v1/access/requests              the caller's tenant's requests       (tenant key)

A tenant key asks for itself (`scope` "key", the default) or for its whole tenant
(`scope` "tenant"); only an admin decides. Every change clears this ingress's cache of
approvals for that tenant, so the caller sees a decision made here on its next call.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from broker.access import ADMIN_ACTOR, AccessGate, Action, parse_resource
from broker.config import SluiceConfig
from broker.errors import (
    AccessNotApproved,
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    UnknownModel,
)
from broker.stores.access import AccessGrant, AccessStore
from ingress.admin import is_admin
from ingress.auth import authenticate
from ingress.body import read_json_object
from ingress.envelope import json_response
from ingress.services import IngressServices, Principal


def access_gate(services: IngressServices) -> AccessGate:
    """The gate `Ingress.admit` (and template routes) ask; without a database nobody
    gets through a resource that requires approval."""
    ledger = services.ledger
    return AccessGate(AccessStore(ledger.engine) if ledger is not None else None)


def _text(data: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidRequest(f"'{name}' must be a non-empty string.", param=name)
    return value


def _listing(grants: list[AccessGrant]) -> Response:
    return json_response({"object": "list", "data": [grant.as_json() for grant in grants]})


def register_access_routes(app: FastAPI, services: IngressServices, gate: AccessGate) -> None:
    """Add the access routes, if the services include the ledger database."""
    if services.ledger is None:
        return
    store = AccessStore(services.ledger.engine)
    limit = services.settings.max_body_bytes

    def require_admin(request: Request) -> None:
        if not is_admin(request, services):
            raise AuthenticationFailed(
                "This endpoint needs the admin key (SLUICE_ADMIN_KEY) as 'Authorization: "
                "Bearer'.")

    def known(resource: str) -> str:
        kind, name = parse_resource(resource)
        if kind == "model" and name not in services.config.models:
            raise UnknownModel(name)
        return resource

    @app.post("/v1/admin/access")
    async def admin_request(request: Request) -> Response:
        require_admin(request)
        data = await read_json_object(request, limit)
        grant = await store.request(
            _text(data, "tenant"), known(_text(data, "resource")),
            key_id=_text(data, "key_id", required=False), reason=_text(data, "reason"),
            actor=ADMIN_ACTOR)
        gate.forget(grant.tenant)
        return json_response(grant.as_json())

    async def decide(request: Request, grant_id: str, action: Action) -> Response:
        require_admin(request)
        data = await read_json_object(request, limit) if await request.body() else {}
        grant = await store.decide(grant_id, action, actor=ADMIN_ACTOR,
                                   reason=_text(data, "reason", required=False))
        gate.forget(grant.tenant)
        return json_response(grant.as_json())

    @app.post("/v1/admin/access/{grant_id}/approve")
    async def approve(request: Request, grant_id: str) -> Response:
        return await decide(request, grant_id, "approved")

    @app.post("/v1/admin/access/{grant_id}/deny")
    async def deny(request: Request, grant_id: str) -> Response:
        return await decide(request, grant_id, "denied")

    @app.get("/v1/admin/access")
    async def admin_list(request: Request) -> Response:
        require_admin(request)
        pending = request.query_params.get("pending", "").lower() in ("1", "true", "yes")
        return _listing(await store.grants(tenant=request.query_params.get("tenant"),
                                         pending=pending))

    @app.get("/v1/admin/access/{grant_id}")
    async def admin_get(request: Request, grant_id: str) -> Response:
        require_admin(request)
        grant = await store.get(grant_id)
        if grant is None:
            raise NotFound(f"No access request {grant_id!r}.")
        return json_response(grant.as_json())

    @app.post("/v1/access/requests")
    async def tenant_request(request: Request) -> Response:
        principal = await authenticate(request, services.api_keys)
        data = await read_json_object(request, limit)
        scope = data.get("scope", "key")
        if scope not in ("key", "tenant"):
            raise InvalidRequest("'scope' must be 'key' or 'tenant'.", param="scope")
        resource = known(_text(data, "resource"))
        _, model = parse_resource(resource)
        if resource.startswith("model:") and not principal.may_use(model):
            raise UnknownModel(model)  # a key limited to other models learns nothing more
        grant = await store.request(
            principal.tenant, resource,
            key_id=principal.api_key_id if scope == "key" else "",
            reason=_text(data, "reason"), actor=principal.api_key_id)
        gate.forget(principal.tenant)
        return json_response(grant.as_json())

    @app.get("/v1/access/requests")
    async def tenant_list(request: Request) -> Response:
        principal = await authenticate(request, services.api_keys)
        return _listing(await store.grants(tenant=principal.tenant))


async def batch_models(request: Request, principal: Principal, config: SluiceConfig,
                       kind: str) -> list[str]:
    """The models a new batch of `principal`'s may send lines to: those of `kind` its key
    may use, and, of those that require approval, only the approved ones (lines for the
    rest are answered like an unknown model's). Both batch doors use it."""
    models = []
    for name, model in config.models.items():
        if not principal.may_use(name) or model.kind != kind:
            continue
        if model.requires_approval:
            try:
                await request.app.state.ingress.access.require(
                    principal.tenant, principal.api_key_id, f"model:{name}")
            except AccessNotApproved:
                continue
        models.append(name)
    return sorted(models)
