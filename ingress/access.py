"""Access approval over HTTP (README "Access approval"): admins decide, tenant keys ask.

    POST /v1/admin/access                 {resource, tenant, key_id?, reason}  (admin)
    POST /v1/admin/access/{id}/approve    {reason?}                            (admin)
    POST /v1/admin/access/{id}/deny       {reason?}                            (admin)
    GET  /v1/admin/access?pending=true&tenant=T                                (admin)
    POST /v1/access/requests              {resource, reason, scope?}           (tenant key)
    GET  /v1/access/requests              the caller's tenant's requests       (tenant key)

"Admin" is the admin key (`SLUICE_ADMIN_KEY`) or any caller whose role is `admin` (an API
key or an OIDC token, README "Identity and roles"); other roles get 403
`insufficient_role`. A resource must exist: a configured model, or a stored template.
A tenant key asks for itself (`scope` "key", the default) or for its whole tenant
(`scope` "tenant"); only an admin decides. Every change clears this ingress's cache of
approvals for that tenant, so the caller sees a decision made here on its next call.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from broker.access import ADMIN_ACTOR, AccessGate, Action, parse_resource, refusal
from broker.config import SluiceConfig
from broker.errors import (
    AccessNotApproved,
    InvalidRequest,
    NotFound,
    UnknownModel,
)
from broker.stores.access import AccessGrant, AccessStore
from broker.stores.templates import get_template
from ingress.admin import is_admin
from ingress.auth import authenticate, authorize, role_of
from ingress.body import read_json_object
from ingress.envelope import json_response
from ingress.services import IngressServices, Principal


def access_gate(services: IngressServices) -> AccessGate:
    """The gate `Ingress.admit` (and template routes) ask; without a database nobody
    gets through a resource that requires approval."""
    ledger = services.ledger
    return AccessGate(AccessStore(ledger.engine) if ledger is not None else None)


async def require_administrator(request: Request, services: IngressServices) -> str:
    """Return who is administering (the actor the audit records) when the caller is the
    admin key or has the `admin` role; every admin route that is not one tenant's asks.

    The admin key is recorded as `ADMIN_ACTOR`; an admin-role caller by its own key id
    (or `jwt:<issuer>:<subject>`), so the audit names the person, not just "an admin".

    Raises:
        AuthenticationFailed: no or invalid credentials (401).
        AccessNotApproved: a caller of another role (403 `insufficient_role`).
    """
    if is_admin(request, services):
        return ADMIN_ACTOR
    principal = await authenticate(request, services.api_keys)
    # Here too, not only through the route table: a mount under a prefix must not open it.
    authorize(principal, "administer")
    if role_of(principal) != "admin":  # `administer` is the admin role's alone today
        raise AccessNotApproved("This needs the admin key or the 'admin' role.",
                                code="insufficient_role")
    return principal.api_key_id


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

    engine = services.ledger.engine

    async def known(resource: str) -> str:
        kind, name = parse_resource(resource)
        if kind == "model" and name not in services.config.models:
            raise UnknownModel(name)
        if kind == "template" and await get_template(engine, name) is None:
            raise NotFound(f"No template '{name}'.")
        return resource

    @app.post("/v1/admin/access")
    async def admin_request(request: Request) -> Response:
        actor = await require_administrator(request, services)
        data = await read_json_object(request, limit)
        grant = await store.request(
            _text(data, "tenant"), await known(_text(data, "resource")),
            key_id=_text(data, "key_id", required=False), reason=_text(data, "reason"),
            actor=actor)
        gate.forget(grant.tenant)
        return json_response(grant.as_json())

    async def decide(request: Request, grant_id: str, action: Action) -> Response:
        actor = await require_administrator(request, services)
        data = await read_json_object(request, limit) if await request.body() else {}
        grant = await store.decide(grant_id, action, actor=actor,
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
        await require_administrator(request, services)
        pending = request.query_params.get("pending", "").lower() in ("1", "true", "yes")
        return _listing(await store.grants(tenant=request.query_params.get("tenant"),
                                         pending=pending))

    @app.get("/v1/admin/access/{grant_id}")
    async def admin_get(request: Request, grant_id: str) -> Response:
        await require_administrator(request, services)
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
        resource = await known(_text(data, "resource"))
        _, model = parse_resource(resource)
        if resource.startswith("model:") and not principal.may_use(model):
            raise UnknownModel(model)  # a key limited to other models learns nothing more
        key_id = principal.api_key_id if scope == "key" else ""
        if key_id and refusal(resource, await store.statuses(
                principal.tenant, key_id, resource)) is None:
            # Its own request would now decide for it (pending): asking must not lock a
            # key out of what its tenant's approval already opens.
            raise InvalidRequest(f"This key already has access to {resource}.",
                                 code="access_already_granted", param="resource")
        grant = await store.request(
            principal.tenant, resource,
            key_id=key_id,
            reason=_text(data, "reason"), actor=principal.api_key_id)
        gate.forget(principal.tenant)
        return json_response(grant.as_json())

    @app.get("/v1/access/requests")
    async def tenant_list(request: Request) -> Response:
        principal = await authenticate(request, services.api_keys)
        return _listing(await store.grants(tenant=principal.tenant))


async def batch_models(request: Request, principal: Principal, config: SluiceConfig,
                       kind: str) -> list[str]:
    """The models and aliases a new batch of `principal`'s may send lines to.

    As `Ingress.admit` decides for a direct call: a model of `kind` the key lists, or an
    alias of one when the key lists the alias or the model; of models that require
    approval, only the approved ones (with their aliases). Lines naming anything else are
    answered like an unknown model's. Both batch doors use it; the launcher resolves an
    alias to its model (workers/batches/routing.py).
    """
    names = [(name, name) for name in config.models] + list(config.aliases.items())
    approved: dict[str, bool] = {}  # asked once per model, not once per alias
    models = []
    for name, served in names:
        model = config.models.get(served)
        if model is None or model.kind != kind or not (
                principal.may_use(name) or principal.may_use(served)):
            continue
        if model.requires_approval:
            if served not in approved:
                try:
                    await request.app.state.ingress.access.require(
                        principal.tenant, principal.api_key_id, f"model:{served}")
                except AccessNotApproved:
                    approved[served] = False
                else:
                    approved[served] = True
            if not approved[served]:
                continue
        models.append(name)
    return sorted(models)
