"""Admin API (keys) and usage queries: the ledger's read and manage side over HTTP.

- `GET /v1/admin/keys[?tenant=]`, `POST /v1/admin/keys`, `PATCH /v1/admin/keys/{id}` (role,
  IP lists, budget alerts), `POST /v1/admin/keys/{id}/revoke`: the admin key
  (`SLUICE_ADMIN_KEY`, compared in constant time) or an `admin`-role caller; a
  `tenant_admin` manages its own tenant's keys, never the role `admin` (README "Identity
  and roles"). Without either, 401; a caller of another role, 403 `insufficient_role`.
  A tenant admin's keys stay within its own key's limits (403 `exceeds_own_limits`), and
  it may not change its own key's role or IP lists. Bodies: `ingress.key_admin`.
- `GET /v1/admin/tenants`, `PUT /v1/admin/tenants/{name}`: tenant budgets and the
  content-storage opt-in, with this month's spend (admin key or `admin` role).
- `GET /v1/usage?from=&to=&group_by=&format=json|csv[&tenant=]`: a normal key sees its own
  tenant's usage only (`tenant` is ignored for it); the admin key sees every tenant's.

These routes read PostgreSQL directly (admin and reporting traffic is small); the hot
path of chat completions never does.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import AccessNotApproved, InvalidRequest, NotFound
from broker.feedback.store import FEEDBACK_DIMENSIONS, feedback_report, merge_feedback
from broker.stores.access_lists import (
    AccessCache,
    apply_tenant_ip_fields,
    ip_lists_body,
    key_access_changes,
    key_access_of,
    tenant_ip_lists,
    update_key_access,
)
from broker.stores.admission import month_of
from broker.stores.budget_alerts import (
    alert_fields,
    alert_rules,
    alerts_section,
    apply_alert_fields,
    key_scope,
    last_alerts,
)
from broker.stores.keys import (
    ApiKeyRecord,
    create_api_key,
    find_key,
    list_api_keys,
    revoke_api_key,
)
from broker.stores.tenants import (
    SpendAccount,
    TenantSettings,
    list_tenants,
    set_tenant,
    spend_accounts_of,
)
from broker.stores.usage import csv_text, json_rows, parse_group_by, parse_time, usage_report
from ingress.auth import admin_scope, authenticate
from ingress.body import read_json_object, validate_body
from ingress.envelope import json_response
from ingress.key_admin import (
    KeyChange,
    NewKey,
    PositiveUsd,
    Usd,
    bounded_limits,
    key_body,
    key_body_with_alerts,
    require_within,
)
from ingress.services import IngressServices

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

class TenantChange(BaseModel):
    """Body of `PUT /v1/admin/tenants/{name}`: fields present change, null clears a budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    monthly_budget_usd: Usd | None = None
    monthly_budget_tokens: Annotated[int, Field(ge=0)] | None = None
    max_queued_requests: Annotated[int, Field(ge=1)] | None = None
    weight: Annotated[float, Field(gt=0)] | None = None
    store_content: bool | None = None
    # README "Budget alerts": percentages of monthly_budget_usd, and USD per UTC day.
    alert_thresholds_pct: list[Annotated[int, Field(ge=1, le=1000)]] | None = None
    daily_spend_alert_usd: PositiveUsd | None = None
    # README "Identity and roles": CIDRs the tenant's callers may (not) come from.
    ip_allow: list[str] | None = None
    ip_deny: list[str] | None = None


def tenant_body(tenant: TenantSettings, account: SpendAccount | None) -> dict[str, Any]:
    """A tenant with its spend this month (money as strings: exact decimals)."""
    return {
        "object": "tenant", "name": tenant.name, "store_content": tenant.store_content,
        "monthly_budget_usd": str(tenant.monthly_budget_usd)
        if tenant.monthly_budget_usd is not None else None,
        "monthly_budget_tokens": tenant.monthly_budget_tokens,
        "max_queued_requests": tenant.max_queued_requests,
        "weight": tenant.weight,
        "spent_usd": str(account.spent_usd) if account else "0",
        "reserved_usd": str(account.reserved_usd) if account else "0",
        "spent_tokens": account.spent_tokens if account else 0,
        "reserved_tokens": account.reserved_tokens if account else 0,
    }


def is_admin(request: Request, services: IngressServices) -> bool:
    """Whether the bearer secret is the admin key (constant-time comparison)."""
    admin = services.settings.admin_key
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if admin is None or scheme.lower() != "bearer" or not secret.strip():
        return False
    return hmac.compare_digest(secret.strip().encode(), admin.get_secret_value().encode())


async def _require_admin(request: Request, services: IngressServices) -> str | None:
    """None for the admin; a tenant admin's own tenant (README "Identity and roles")."""
    return await admin_scope(request, services.api_keys, admin_key=is_admin(request, services),
                             permission="manage_keys")


def register_ledger_routes(app: FastAPI, services: IngressServices) -> None:
    """Add the admin and usage routes, if the services include ledger access."""
    ledger = services.ledger
    if ledger is None:
        return
    engine = ledger.engine

    @app.get("/v1/admin/keys")
    async def keys_list(request: Request) -> Response:
        scope = await _require_admin(request, services)
        tenant = scope or request.query_params.get("tenant")
        keys = await list_api_keys(engine, tenant)
        rules, fired = await alert_rules(engine, tenant), await last_alerts(engine, tenant)
        return json_response({"object": "list", "data": [
            key_body_with_alerts(key, rules.get(key_scope(key.id)), fired.get(key_scope(key.id)))
            for key in keys]})

    @app.post("/v1/admin/keys")
    async def keys_create(request: Request) -> Response:
        scope = await _require_admin(request, services)
        data = await read_json_object(request, services.settings.max_body_bytes)
        spec = validate_body(NewKey, data)
        if scope is not None and spec.tenant != scope:
            raise NotFound(f"No tenant '{spec.tenant}' among yours ({scope}).")
        access = key_access_of(spec.role, spec.ip_allow, spec.ip_deny, scope=scope)
        unknown = [n for n in spec.guardrails or () if n not in services.config.guardrails]
        if unknown:  # workers would refuse every request of the key: say so now
            raise InvalidRequest(f"Unknown guardrail policy '{unknown[0]}' (the config's "
                                 "`guardrails` declares the policies).", param="guardrails")
        limits = spec.limits(access)
        caller = await _own_key(request, services, engine, scope)
        if caller is not None:
            require_within(caller.limits, bounded_limits(limits))
        secret, record = await create_api_key(engine, spec.tenant, spec.name, limits)
        return json_response(key_body(record) | {"secret": secret}, 201)

    @app.patch("/v1/admin/keys/{key_id}")
    async def keys_change(request: Request, key_id: str) -> Response:
        scope = await _require_admin(request, services)
        data = await read_json_object(request, services.settings.max_body_bytes)
        fields = validate_body(KeyChange, data).fields()
        record = await _active_key(engine, key_id, scope)
        # Everything is checked before anything is stored: a refused change changes nothing.
        access = key_access_changes(fields, current_role=record.limits.role, scope=scope)
        caller = await _own_key(request, services, engine, scope)
        if caller is not None and access:
            if caller.id == key_id:  # else it could lift the limits an admin set on it
                raise AccessNotApproved("A tenant admin may not change its own key's role "
                                        "or IP lists.", code="insufficient_role")
            require_within(caller.limits, access)
        await apply_alert_fields(engine, record.tenant, fields, scope=key_scope(key_id))
        await update_key_access(engine, key_id, access)
        _forget_access(request, record.tenant, key_id)  # a demotion counts here at once
        changed = await _active_key(engine, key_id, scope)
        rule = (await alert_rules(engine, record.tenant)).get(key_scope(key_id))
        fired = (await last_alerts(engine, record.tenant)).get(key_scope(key_id))
        return json_response(key_body_with_alerts(changed, rule, fired))

    @app.post("/v1/admin/keys/{key_id}/revoke")
    async def keys_revoke(request: Request, key_id: str) -> Response:
        scope = await _require_admin(request, services)
        record = await _active_key(engine, key_id, scope)
        if scope is not None and record.limits.role == "admin":
            # A tenant admin could not have made it, and may not take it away either.
            raise AccessNotApproved("Only the admin may revoke a key with the role 'admin'.",
                                    code="insufficient_role")
        if not await revoke_api_key(engine, key_id):
            raise NotFound(f"No active key with id '{key_id}'.")
        return json_response({"id": key_id, "object": "api_key", "revoked": True})

    @app.get("/v1/admin/tenants")
    async def tenants_list(request: Request) -> Response:
        await _require_every_tenant(request, services)
        accounts = await spend_accounts_of(engine, month_of(datetime.now(UTC)))
        rules, ip_lists = await alert_rules(engine), await tenant_ip_lists(engine)
        data = [tenant_body(tenant, accounts.get(f"tenant:{tenant.name}"))
                | alert_fields(rules.get(f"tenant:{tenant.name}"))
                | ip_lists_body(ip_lists.get(tenant.name))
                for tenant in await list_tenants(engine)]
        return json_response({"object": "list", "data": data})

    @app.put("/v1/admin/tenants/{name}")
    async def tenants_set(request: Request, name: str) -> Response:
        await _require_every_tenant(request, services)
        data = await read_json_object(request, services.settings.max_body_bytes)
        change = validate_body(TenantChange, data)
        fields = {field: getattr(change, field) for field in change.model_fields_set}
        if fields.get("store_content", False) is None:
            raise InvalidRequest("store_content must be true or false.", param="store_content")
        if "weight" in fields and fields["weight"] is None:
            fields["weight"] = 1.0  # null: back to the default share
        await apply_alert_fields(engine, name, fields)
        ip_lists = await apply_tenant_ip_fields(engine, name, fields)
        _forget_access(request, name)
        tenant = await set_tenant(engine, name, **fields)
        accounts = await spend_accounts_of(engine, month_of(datetime.now(UTC)))
        rule = (await alert_rules(engine, name)).get(f"tenant:{name}")
        return json_response(tenant_body(tenant, accounts.get(f"tenant:{name}"))
                             | alert_fields(rule) | ip_lists)

    @app.get("/v1/usage")
    async def usage(request: Request) -> Response:
        return await _usage(request, services, engine)


async def _usage(request: Request, services: IngressServices, engine: AsyncEngine) -> Response:
    query = request.query_params
    scope = await admin_scope(request, services.api_keys, admin_key=is_admin(request, services))
    tenant = query.get("tenant") if scope is None else scope
    now = datetime.now(UTC)
    start = parse_time(query["from"], param="from") if "from" in query else now - timedelta(30)
    end = parse_time(query["to"], param="to") if "to" in query else now
    group_by = parse_group_by(query.get("group_by"))
    output = query.get("format", "json")
    if output not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv.", param="format")
    rows = await usage_report(engine, start=start, end=end, group_by=group_by, tenant=tenant)
    if output == "json" and set(group_by) <= set(FEEDBACK_DIMENSIONS):  # README "Feedback"
        rows = merge_feedback(rows, await feedback_report(
            engine, start=start, end=end, group_by=group_by, tenant=tenant), group_by)
    if output == "csv":
        return Response(csv_text(rows, group_by), media_type="text/csv; charset=utf-8")
    body: dict[str, Any] = {
        "object": "list", "from": start.isoformat(), "to": end.isoformat(),
        "group_by": list(group_by), "tenant": tenant, "data": json_rows(rows),
    }
    if tenant is not None:  # README "Budget alerts"
        body["alerts"] = await alerts_section(engine, tenant)
    return json_response(body)


def _forget_access(request: Request, tenant: str, key_id: str | None = None) -> None:
    """Clear this ingress's cached roles and IP lists of `tenant` (or one key of it)."""
    cache: AccessCache | None = getattr(request.app.state, "access_cache", None)
    if cache is not None:
        cache.forget(tenant, key_id)


async def _active_key(engine: AsyncEngine, key_id: str, scope: str | None) -> ApiKeyRecord:
    """Key `key_id` if it is unrevoked and within `scope` (None: any tenant's), else 404
    (another tenant's key is not told apart from a missing one)."""
    record = await find_key(engine, key_id)
    if record is None or record.revoked_at is not None or (
            scope is not None and record.tenant != scope):
        raise NotFound(f"No active key with id '{key_id}'.")
    return record


async def _own_key(request: Request, services: IngressServices, engine: AsyncEngine,
                   scope: str | None) -> ApiKeyRecord | None:
    """The key a tenant admin (`scope` set) acts through, whose limits bound the keys it
    creates or changes; None for the admin (not limited) or a caller without a key (an
    OIDC token: no key limits to escape)."""
    if scope is None:
        return None
    principal = await authenticate(request, services.api_keys)
    return await find_key(engine, principal.api_key_id)


async def _require_every_tenant(request: Request, services: IngressServices) -> None:
    """Tenants' budgets, lists and settings are the admin's alone (a tenant admin's scope
    is its own tenant's keys, not the tenants)."""
    if await _require_admin(request, services) is not None:
        raise AccessNotApproved("Tenants are managed with the admin key or the 'admin' role.",
                                code="insufficient_role")
