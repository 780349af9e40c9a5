"""Tenants: monthly budgets and the content-storage opt-in, with a TTL cache for readers.

A tenant exists implicitly as soon as a key names it; a `tenants` row is needed only to
give it a budget or to opt in to storing prompt and completion text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.reloading import Reloading
from broker.stores.database import database_errors
from broker.stores.tables import spend_accounts, tenants


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """One tenant's settings; the defaults are those of a tenant without a row."""

    name: str
    store_content: bool = False
    monthly_budget_usd: Decimal | None = None
    monthly_budget_tokens: int | None = None
    # Fair share: requests accepted and not finished at once; None: no cap.
    max_queued_requests: int | None = None
    # Fair share: the tenant's share relative to others (more turns, more worker slots).
    weight: float = 1.0


_UNSET: Any = object()


def _settings(row: Any) -> TenantSettings:  # a Row of the tenants table
    return TenantSettings(
        name=row.name,
        store_content=row.store_content,
        monthly_budget_usd=row.monthly_budget_usd,
        monthly_budget_tokens=row.monthly_budget_tokens,
        max_queued_requests=row.max_queued_requests,
        weight=row.weight,
    )


async def set_tenant(
    engine: AsyncEngine,
    name: str,
    *,
    store_content: bool | None = None,
    monthly_budget_usd: Decimal | None = _UNSET,
    monthly_budget_tokens: int | None = _UNSET,
    max_queued_requests: int | None = _UNSET,
    weight: float | None = None,
) -> TenantSettings:
    """Create or change a tenant; only the arguments given change (None clears a limit).

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    changes: dict[str, Any] = {}
    if store_content is not None:
        changes["store_content"] = store_content
    if monthly_budget_usd is not _UNSET:
        changes["monthly_budget_usd"] = monthly_budget_usd
    if monthly_budget_tokens is not _UNSET:
        changes["monthly_budget_tokens"] = monthly_budget_tokens
    if max_queued_requests is not _UNSET:
        changes["max_queued_requests"] = max_queued_requests
    if weight is not None:
        changes["weight"] = weight
    statement = insert(tenants).values(name=name, **changes)
    statement = (
        statement.on_conflict_do_update(index_elements=[tenants.c.name], set_=changes)
        if changes else statement.on_conflict_do_nothing(index_elements=[tenants.c.name])
    )
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(statement)
            row = (await connection.execute(
                select(tenants).where(tenants.c.name == name))).one()
    return _settings(row)


async def get_tenant(engine: AsyncEngine, name: str) -> TenantSettings:
    """The settings of tenant `name` (defaults when it has no row)."""
    with database_errors(engine):
        async with engine.connect() as connection:
            row = (await connection.execute(
                select(tenants).where(tenants.c.name == name))).one_or_none()
    return TenantSettings(name) if row is None else _settings(row)


async def list_tenants(engine: AsyncEngine) -> list[TenantSettings]:
    """Every tenant with a row, by name."""
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(select(tenants).order_by(tenants.c.name))).all()
    return [_settings(row) for row in rows]


async def tenant_weights(engine: AsyncEngine) -> dict[str, float]:
    """The weight of every tenant whose weight is not 1 (fair share)."""
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(
                select(tenants.c.name, tenants.c.weight).where(tenants.c.weight != 1))).all()
    return {row.name: row.weight for row in rows}


class TenantCache:
    """Tenant settings read at most once per `ttl_s` (all tenants in one query).

    Readers on hot paths (ingress admission, the ledger's privacy rule) see a change within
    `ttl_s`; the whole table is small (one row per tenant with settings). While PostgreSQL
    is away the settings last read are served (`broker.reloading`).
    """

    def __init__(self, engine: AsyncEngine, *, ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        async def load() -> dict[str, TenantSettings]:
            return {tenant.name: tenant for tenant in await list_tenants(engine)}

        self._tenants = Reloading(load, ttl_s=ttl_s, clock=clock)

    async def get(self, name: str) -> TenantSettings:
        """The settings of `name` (defaults when it has no row).

        Raises:
            DatabaseUnavailable: PostgreSQL cannot be reached and nothing was ever loaded.
        """
        return (await self._tenants.get()).get(name) or TenantSettings(name)

    async def all(self) -> list[TenantSettings]:
        """Every tenant with a row."""
        return list((await self._tenants.get()).values())

    def invalidate(self) -> None:
        """Read the table again on the next `get`."""
        self._tenants.invalidate()


@dataclass(frozen=True, slots=True)
class SpendAccount:
    """One scope's month: recorded spend and the holds of requests still running."""

    scope: str
    spent_usd: Decimal
    reserved_usd: Decimal
    spent_tokens: int
    reserved_tokens: int


async def spend_accounts_of(engine: AsyncEngine, period: date) -> dict[str, SpendAccount]:
    """Every scope's account for `period` (the first day of a month), by scope."""
    statement = select(spend_accounts).where(spend_accounts.c.period == period)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return {row.scope: SpendAccount(row.scope, row.spent_usd, row.reserved_usd,
                                    row.spent_tokens, row.reserved_tokens) for row in rows}
