"""`access_grants` and `access_audit`: access requests, their decisions and the audit trail.

Each change locks its grant row, moves it by `broker.access.next_status` and appends an
audit row in the same transaction, so the audit can never disagree with the grants. The
audit table refuses UPDATE and DELETE (a trigger, migration 0019).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.access import Action, Status, deciding, next_status, parse_resource
from broker.errors import NotFound
from broker.stores.database import database_errors
from broker.stores.tables import access_audit, access_grants


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """One access request and where it stands; `key_id` '' means the whole tenant."""

    id: str
    tenant: str
    key_id: str
    resource: str
    status: Status
    reason: str
    requested_by: str
    decided_by: str | None
    created_at: datetime
    decided_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """The API's shape: Unix seconds, `key_id` null for tenant-wide."""
        return {
            "id": self.id, "object": "access_request", "tenant": self.tenant,
            "key_id": self.key_id or None, "resource": self.resource, "status": self.status,
            "reason": self.reason, "requested_by": self.requested_by,
            "decided_by": self.decided_by, "created_at": int(self.created_at.timestamp()),
            "decided_at": int(self.decided_at.timestamp()) if self.decided_at else None,
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of `access_audit`."""

    grant_id: str
    tenant: str
    key_id: str
    resource: str
    action: Action
    actor: str
    reason: str
    at: datetime


def _grant(row: Any) -> AccessGrant:
    return AccessGrant(*(getattr(row, name) for name in AccessGrant.__dataclass_fields__))


class AccessStore:
    """Access grants in PostgreSQL (the `broker.access.GrantReader` of `AccessGate`)."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def request(self, tenant: str, resource: str, *, key_id: str = "", reason: str,
                      actor: str) -> AccessGrant:
        """Ask for access (a new grant, or the existing one of this scope back to pending).

        Raises:
            InvalidRequest: a bad resource, or the grant is already approved.
        """
        parse_resource(resource)
        table = access_grants.c
        with database_errors(self.engine):
            async with self.engine.begin() as connection:
                # Create the row if missing (no-op otherwise), then lock it: two concurrent
                # requests for one scope serialize instead of failing on the unique key.
                await connection.execute(pg_insert(access_grants).values(
                    id=f"acc_{uuid.uuid4().hex[:24]}", tenant=tenant, key_id=key_id,
                    resource=resource, status="new", reason=reason, requested_by=actor,
                ).on_conflict_do_nothing(constraint="uq_access_grants_scope"))
                row = (await connection.execute(select(access_grants).where(
                    table.tenant == tenant, table.key_id == key_id,
                    table.resource == resource).with_for_update())).one()
                current = None if row.status == "new" else cast(Status, row.status)
                status = next_status(current, "requested")
                changes: dict[str, Any] = {"status": status, "reason": reason,
                                           "requested_by": actor}
                if current is not None:
                    changes |= {"decided_by": None, "decided_at": None}
                return await self._move(connection, row.id, changes, "requested", actor,
                                        reason)

    async def decide(self, grant_id: str, action: Action, *, actor: str,
                     reason: str = "") -> AccessGrant:
        """Approve or deny grant `grant_id`.

        Raises:
            NotFound: no such grant.
            InvalidRequest: the decision is not allowed from its status.
        """
        with database_errors(self.engine):
            async with self.engine.begin() as connection:
                row = (await connection.execute(select(access_grants).where(
                    access_grants.c.id == grant_id).with_for_update())).one_or_none()
                if row is None or row.status == "new":
                    raise NotFound(f"No access request {grant_id!r}.")
                status = next_status(cast(Status, row.status), action)
                return await self._move(
                    connection, grant_id,
                    {"status": status, "decided_by": actor, "decided_at": func.now()},
                    action, actor, reason)

    async def _move(self, connection: AsyncConnection, grant_id: str,
                    changes: dict[str, Any], action: Action, actor: str,
                    reason: str) -> AccessGrant:
        row = (await connection.execute(update(access_grants).where(
            access_grants.c.id == grant_id).values(**changes).returning(access_grants))).one()
        await connection.execute(insert(access_audit).values(
            grant_id=grant_id, tenant=row.tenant, key_id=row.key_id, resource=row.resource,
            action=action, actor=actor, reason=reason))
        return _grant(row)

    async def get(self, grant_id: str) -> AccessGrant | None:
        """One grant, or None."""
        with database_errors(self.engine):
            async with self.engine.connect() as connection:
                row = (await connection.execute(select(access_grants).where(
                    access_grants.c.id == grant_id, access_grants.c.status != "new"))
                ).one_or_none()
        return None if row is None else _grant(row)

    async def grants(self, *, tenant: str | None = None, pending: bool = False
                   ) -> list[AccessGrant]:
        """Grants, newest first; of one tenant, or only those awaiting a decision."""
        table = access_grants.c
        statement = select(access_grants).where(table.status != "new").order_by(
            table.created_at.desc(), table.id)
        if tenant is not None:
            statement = statement.where(table.tenant == tenant)
        if pending:
            statement = statement.where(table.status == "pending")
        with database_errors(self.engine):
            async with self.engine.connect() as connection:
                rows = (await connection.execute(statement)).all()
        return [_grant(row) for row in rows]

    async def statuses(self, tenant: str, key_id: str, resource: str) -> list[Status]:
        """Statuses of the tenant-wide grant and `key_id`'s own for `resource` that decide
        (`broker.access.deciding`: a decision on the key's grant overrides the tenant's)."""
        table = access_grants.c
        statement = select(table.key_id, table.status).where(
            table.tenant == tenant, table.resource == resource,
            or_(table.key_id == "", table.key_id == key_id), table.status != "new")
        with database_errors(self.engine):
            async with self.engine.connect() as connection:
                rows = (await connection.execute(statement)).all()
        found = {row.key_id: cast(Status, row.status) for row in rows}
        # A batch made without a key (`key_id` '') is judged by its tenant's grant alone.
        return deciding(found.get(""), found.get(key_id) if key_id else None)

    async def audit(self, *, grant_id: str | None = None, tenant: str | None = None
                    ) -> list[AuditEntry]:
        """Audit rows in the order they were written."""
        table = access_audit.c
        statement = select(table.grant_id, table.tenant, table.key_id, table.resource,
                           table.action, table.actor, table.reason, table.at
                           ).order_by(table.id)
        if grant_id is not None:
            statement = statement.where(table.grant_id == grant_id)
        if tenant is not None:
            statement = statement.where(table.tenant == tenant)
        with database_errors(self.engine):
            async with self.engine.connect() as connection:
                rows = (await connection.execute(statement)).all()
        return [AuditEntry(*row) for row in rows]
