"""Webhooks at the edge: the `X-Webhook-URL` check and the tenant's webhook API.

A request may name a URL in `X-Webhook-URL`; its final result is then POSTed there by
`sluice deliver`, signed with the tenant's webhook secrets. The URL is checked here with
the deliverer's SSRF rules (http(s) only, every resolved address global unless
allowlisted), and refused with 400 if the tenant has no active secret (an unsigned
delivery is never sent) or if a 410 from that URL disabled it.

Tenant API (the tenant's own API key; everything is scoped to its tenant):
- `POST /v1/webhooks/secrets` `{"keep_old_s": 86400}`: a new secret (shown once); the old
  ones keep signing for `keep_old_s` seconds. `GET /v1/webhooks/secrets` lists ids.
- `POST /v1/webhooks/endpoints` `{"url", "description"}`: the URL receives every final
  result of the tenant (the response carries a secret if the tenant had none);
  `GET /v1/webhooks/endpoints`, `DELETE /v1/webhooks/endpoints/{id}`.
- `GET /v1/webhooks/deliveries[?request_id=&limit=]`: deliveries with every attempt.
- `POST /v1/webhooks/deliveries/{id}/redeliver`: another series of attempts, now.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import InvalidRequest, NotFound, WebhookUrlRefused
from broker.webhooks import store
from broker.webhooks.addresses import parse_webhook_url, resolve_pinned
from ingress.auth import authenticate
from ingress.body import read_json_object, validate_body
from ingress.envelope import json_response
from ingress.services import IngressServices

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

HEADER = "x-webhook-url"
_ROTATION_GRACE_S = 24 * 3600.0


class NewSecret(BaseModel):
    """Body of `POST /v1/webhooks/secrets`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_old_s: Annotated[float, Field(ge=0, le=30 * 24 * 3600)] = _ROTATION_GRACE_S


class NewEndpoint(BaseModel):
    """Body of `POST /v1/webhooks/endpoints`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=2048)]
    description: Annotated[str, Field(max_length=500)] | None = None


def _epoch(value: Any) -> Any:
    return int(value.timestamp()) if isinstance(value, datetime) else value


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    # str(): SQLAlchemy names columns with a str subclass, which orjson refuses as a key.
    return {str(key): [_plain(v) for v in value] if isinstance(value, list) else _epoch(value)
            for key, value in row.items()}


class WebhookIntake:
    """Checks `X-Webhook-URL` and serves the tenant's webhook API.

    Args:
        services: the edge's services; webhooks need its ledger database, and its
            `webhooks` settings hold the SSRF allowlist.
    """

    def __init__(self, services: IngressServices):
        self._services = services
        self._policy = services.webhooks.address_policy()

    def _engine(self) -> AsyncEngine:
        if self._services.ledger is None:
            raise InvalidRequest("Webhooks are not available on this ingress (no database).")
        return self._services.ledger.engine

    async def checked_url(self, url: str) -> str:
        """`url` if the SSRF rules admit it now; `WebhookUrlRefused` (400) otherwise."""
        target = parse_webhook_url(url)
        try:
            await resolve_pinned(target, self._policy)
        except OSError as exc:
            raise WebhookUrlRefused(f"Webhook URL host {target.host!r} does not resolve.") from exc
        return target.url

    async def from_header(self, request: Request, tenant: str) -> str | None:
        """The request's checked webhook URL, or None when it names none.

        Raises:
            WebhookUrlRefused: the URL is refused, disabled, or the tenant cannot sign.
        """
        raw = request.headers.get(HEADER)
        if raw is None:
            return None
        url = await self.checked_url(raw)
        engine = self._engine()
        reason = await store.disabled_reason(engine, tenant, url)
        if reason is not None:
            raise WebhookUrlRefused(f"Webhook URL {url!r} is disabled: {reason}. Register it "
                                    "again (POST /v1/webhooks/endpoints) once it is fixed.")
        if not await store.has_active_secret(engine, tenant):
            raise WebhookUrlRefused("Your tenant has no webhook secret to sign deliveries "
                                    "with; create one with POST /v1/webhooks/secrets.")
        return url

    def register(self, app: FastAPI) -> None:
        """Add the tenant webhook API (only when the edge has a database)."""
        if self._services.ledger is None:
            return
        keys, limit = self._services.api_keys, self._services.settings.max_body_bytes

        async def tenant_and_body(request: Request) -> tuple[str, dict[str, Any]]:
            tenant = (await authenticate(request, keys)).tenant
            has_body = request.headers.get("content-length", "0") != "0"
            return tenant, (await read_json_object(request, limit) if has_body else {})

        @app.post("/v1/webhooks/secrets")
        async def secrets_rotate(request: Request) -> Response:
            tenant, data = await tenant_and_body(request)
            spec = validate_body(NewSecret, data)
            new = await store.rotate_secret(self._engine(), tenant, spec.keep_old_s)
            return json_response(_secret_body(new), 201)

        @app.get("/v1/webhooks/secrets")
        async def secrets_list(request: Request) -> Response:
            tenant = (await authenticate(request, keys)).tenant
            found = await store.list_secrets(self._engine(), tenant)
            return json_response({"object": "list", "data": [_secret_body(s) for s in found]})

        @app.post("/v1/webhooks/endpoints")
        async def endpoints_create(request: Request) -> Response:
            tenant, data = await tenant_and_body(request)
            spec = validate_body(NewEndpoint, data)
            url = await self.checked_url(spec.url)
            engine = self._engine()
            body = _endpoint_body(await store.register_endpoint(
                engine, tenant, url, spec.description,
                limit=self._services.webhooks.webhook_max_endpoints_per_tenant))
            if not await store.has_active_secret(engine, tenant):
                new = await store.rotate_secret(engine, tenant, 0)
                body["secret"] = new.secret
            return json_response(body, 201)

        @app.get("/v1/webhooks/endpoints")
        async def endpoints_list(request: Request) -> Response:
            tenant = (await authenticate(request, keys)).tenant
            found = await store.list_endpoints(self._engine(), tenant)
            return json_response({"object": "list", "data": [_endpoint_body(e) for e in found]})

        @app.delete("/v1/webhooks/endpoints/{endpoint_id}")
        async def endpoints_delete(request: Request, endpoint_id: str) -> Response:
            tenant = (await authenticate(request, keys)).tenant
            if not await store.delete_endpoint(self._engine(), tenant, endpoint_id):
                raise NotFound(f"No webhook endpoint with id '{endpoint_id}'.")
            return json_response({"id": endpoint_id, "object": "webhook_endpoint",
                                  "deleted": True})

        @app.get("/v1/webhooks/deliveries")
        async def deliveries_list(request: Request) -> Response:
            tenant = (await authenticate(request, keys)).tenant
            raw_limit = request.query_params.get("limit", "100")
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
                raise InvalidRequest("limit must be an integer from 1 to 1000.", param="limit")
            rows = await store.list_deliveries(
                self._engine(), tenant, request_id=request.query_params.get("request_id"),
                limit=int(raw_limit))
            data = [_plain(row) | {"object": "webhook_delivery"} for row in rows]
            return json_response({"object": "list", "data": data})

        @app.post("/v1/webhooks/deliveries/{delivery_id}/redeliver")
        async def deliveries_redeliver(request: Request, delivery_id: str) -> Response:
            tenant = (await authenticate(request, keys)).tenant
            if not await store.redeliver(self._engine(), tenant, delivery_id):
                raise NotFound(f"No webhook delivery with id '{delivery_id}'.")
            return json_response({"id": delivery_id, "object": "webhook_delivery",
                                  "state": "pending", "redelivery_requested": True}, 202)


def _secret_body(record: store.SecretRecord) -> dict[str, Any]:
    body = {"id": record.id, "object": "webhook_secret",
            "created_at": _epoch(record.created_at), "expires_at": _epoch(record.expires_at)}
    return body | ({"secret": record.secret} if record.secret is not None else {})


def _endpoint_body(record: store.EndpointRecord) -> dict[str, Any]:
    return {
        "id": record.id, "object": "webhook_endpoint", "url": record.url,
        "subscribed": record.subscribed, "description": record.description,
        "created_at": _epoch(record.created_at), "disabled_at": _epoch(record.disabled_at),
        "disabled_reason": record.disabled_reason,
    }
