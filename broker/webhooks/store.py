"""Tenant-facing webhook records: signing secrets, endpoints, deliveries, redelivery.

Ingress manages these for a tenant; the deliverer (`workers.deliver`) reads secrets and
endpoints and writes deliveries and attempts. Every query is scoped by tenant.
"""

from __future__ import annotations

import secrets as random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.errors import InvalidRequest
from broker.stores.database import database_errors
from broker.webhooks.signing import generate_secret
from broker.webhooks.tables import (
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_secrets,
)


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A tenant's signing secret; `secret` is filled only when it was just created."""

    id: str
    created_at: datetime
    expires_at: datetime | None
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """A registered (or 410-disabled) webhook URL of a tenant."""

    id: str
    url: str
    subscribed: bool
    description: str | None
    created_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None


def _row(record_type: type[Any], row: Any) -> Any:
    return record_type(**{name: getattr(row, name) for name in record_type.__slots__})


async def active_secrets(connection: AsyncConnection, tenant: str) -> list[str]:
    """The secrets that sign `tenant`'s deliveries now, newest first."""
    statement = (
        select(webhook_secrets.c.secret)
        .where(webhook_secrets.c.tenant == tenant, _active())
        .order_by(webhook_secrets.c.created_at.desc(), webhook_secrets.c.id)
    )
    return list((await connection.execute(statement)).scalars())


def _active() -> Any:
    expires = webhook_secrets.c.expires_at
    return or_(expires.is_(None), expires > func.now())


async def rotate_secret(engine: AsyncEngine, tenant: str, keep_old_s: float) -> SecretRecord:
    """Create a new secret; the active ones keep signing for `keep_old_s` more seconds.

    Both old and new secrets sign every delivery meanwhile (Standard Webhooks allows
    several signatures), so receivers can switch to the new one without losing any.
    """
    new_id, secret = f"whk_{random.token_hex(8)}", generate_secret()
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(
                update(webhook_secrets)
                .where(webhook_secrets.c.tenant == tenant, _active())
                .values(expires_at=func.least(
                    func.coalesce(webhook_secrets.c.expires_at, func.now() + _seconds(keep_old_s)),
                    func.now() + _seconds(keep_old_s),
                ))
            )
            row = (await connection.execute(
                webhook_secrets.insert()
                .values(id=new_id, tenant=tenant, secret=secret)
                .returning(webhook_secrets.c.id, webhook_secrets.c.created_at,
                           webhook_secrets.c.expires_at)
            )).one()
    return SecretRecord(row.id, row.created_at, row.expires_at, secret)


async def list_secrets(engine: AsyncEngine, tenant: str) -> list[SecretRecord]:
    """`tenant`'s active secrets (without their values), newest first."""
    statement = (
        select(webhook_secrets.c.id, webhook_secrets.c.created_at, webhook_secrets.c.expires_at)
        .where(webhook_secrets.c.tenant == tenant, _active())
        .order_by(webhook_secrets.c.created_at.desc())
    )
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return [SecretRecord(row.id, row.created_at, row.expires_at) for row in rows]


async def has_active_secret(engine: AsyncEngine, tenant: str) -> bool:
    """Whether `tenant` can have deliveries signed."""
    with database_errors(engine):
        async with engine.connect() as connection:
            return bool(await active_secrets(connection, tenant))


async def register_endpoint(
    engine: AsyncEngine, tenant: str, url: str, description: str | None, *, limit: int,
) -> EndpointRecord:
    """Subscribe `url` to every final result of `tenant` (re-enables a disabled one).

    Raises:
        InvalidRequest: `tenant` has `limit` endpoints already (each final result is sent
            to every one of them, so their number multiplies the deliverer's work).
    """
    statement = insert(webhook_endpoints).values(
        id=f"we_{random.token_hex(8)}", tenant=tenant, url=url, subscribed=True,
        description=description,
    )
    upsert = statement.on_conflict_do_update(
        index_elements=[webhook_endpoints.c.tenant, webhook_endpoints.c.url],
        set_={"subscribed": True, "description": statement.excluded.description,
              "disabled_at": None, "disabled_reason": None},
    ).returning(*webhook_endpoints.c)
    with database_errors(engine):
        async with engine.begin() as connection:
            # One registration per tenant at a time, so two at once cannot both fit.
            await connection.execute(select(func.pg_advisory_xact_lock(func.hashtext(tenant))))
            existing = set((await connection.execute(
                select(webhook_endpoints.c.url).where(webhook_endpoints.c.tenant == tenant)
            )).scalars())
            if url not in existing and len(existing) >= limit:
                raise InvalidRequest(
                    f"This tenant has {len(existing)} webhook endpoints, the most allowed; "
                    "delete one (DELETE /v1/webhooks/endpoints/{id}) before adding another.",
                    param="url", code="too_many_webhook_endpoints")
            row = (await connection.execute(upsert)).one()
    return _row(EndpointRecord, row)  # type: ignore[no-any-return]


async def list_endpoints(engine: AsyncEngine, tenant: str) -> list[EndpointRecord]:
    """`tenant`'s endpoints, oldest first (disabled ones included)."""
    statement = (
        select(webhook_endpoints)
        .where(webhook_endpoints.c.tenant == tenant)
        .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
    )
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return [_row(EndpointRecord, row) for row in rows]


async def delete_endpoint(engine: AsyncEngine, tenant: str, endpoint_id: str) -> bool:
    """Forget an endpoint; False if `tenant` has none with this id."""
    statement = delete(webhook_endpoints).where(
        webhook_endpoints.c.tenant == tenant, webhook_endpoints.c.id == endpoint_id
    ).returning(webhook_endpoints.c.id)
    with database_errors(engine):
        async with engine.begin() as connection:
            return (await connection.execute(statement)).one_or_none() is not None


async def disabled_reason(engine: AsyncEngine, tenant: str, url: str) -> str | None:
    """Why `url` is disabled for `tenant` (a 410 from it), or None if it is not."""
    statement = select(webhook_endpoints.c.disabled_reason).where(
        webhook_endpoints.c.tenant == tenant, webhook_endpoints.c.url == url,
        webhook_endpoints.c.disabled_at.is_not(None),
    )
    with database_errors(engine):
        async with engine.connect() as connection:
            row = (await connection.execute(statement)).one_or_none()
    return None if row is None else (row.disabled_reason or "disabled")


_DELIVERY_COLUMNS = [c for c in webhook_deliveries.c if c.name not in ("payload", "leased_until")]


async def list_deliveries(
    engine: AsyncEngine, tenant: str, *, request_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """`tenant`'s deliveries, newest first, each with its attempts (oldest first)."""
    statement = (
        select(*_DELIVERY_COLUMNS)
        .where(webhook_deliveries.c.tenant == tenant)
        .order_by(webhook_deliveries.c.created_at.desc(), webhook_deliveries.c.id)
        .limit(limit)
    )
    if request_id is not None:
        statement = statement.where(webhook_deliveries.c.request_id == request_id)
    with database_errors(engine):
        async with engine.connect() as connection:
            deliveries = [row._asdict() for row in await connection.execute(statement)]
            ids = [delivery["id"] for delivery in deliveries]
            attempts = await connection.execute(
                select(webhook_attempts)
                .where(webhook_attempts.c.delivery_id.in_(ids))
                .order_by(webhook_attempts.c.delivery_id, webhook_attempts.c.attempt)
            )
            by_delivery: dict[str, list[dict[str, Any]]] = {}
            for row in attempts:
                by_delivery.setdefault(row.delivery_id, []).append(row._asdict())
    for delivery in deliveries:
        delivery["attempt_log"] = by_delivery.get(delivery["id"], [])
    return deliveries


async def redeliver(engine: AsyncEngine, tenant: str, delivery_id: str) -> bool:
    """Schedule another series of attempts now; False if `tenant` has no such delivery.

    Asking for it is taken as "the receiver is fixed": a URL a 410 disabled is enabled again.
    """
    with database_errors(engine):
        async with engine.begin() as connection:
            row = (await connection.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.tenant == tenant,
                       webhook_deliveries.c.id == delivery_id)
                .values(state="pending", next_attempt_at=func.now(), finished_at=None,
                        attempt_limit=webhook_deliveries.c.attempts
                        + webhook_deliveries.c.max_attempts,
                        updated_at=func.now())
                .returning(webhook_deliveries.c.url)
            )).one_or_none()
            if row is None:
                return False
            await connection.execute(
                update(webhook_endpoints)
                .where(webhook_endpoints.c.tenant == tenant, webhook_endpoints.c.url == row.url)
                .values(disabled_at=None, disabled_reason=None)
            )
    return True


def _seconds(value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)
