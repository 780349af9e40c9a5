"""Read side of the `requests` table, which the ledger keeps from the request and result topics.

Polling (`GET /v1/requests/{id}`) and batches read here instead of Kafka. The table is
eventually consistent: a request accepted a moment ago may not have a row yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.database import database_errors
from broker.stores.tables import requests
from schemas import Lane, RequestStatus


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the ledger last recorded it.

    `result` is the final `InferenceResult` as JSON (None while queued). `lane` is None in
    the short window where the result was recorded before the request itself.
    """

    id: str
    tenant: str
    api_key_id: str | None
    model: str
    lane: Lane | None
    status: RequestStatus
    result: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def is_final(self) -> bool:
        """Whether the request has its one final answer."""
        return self.status is not RequestStatus.QUEUED


async def get_request(engine: AsyncEngine, request_id: str) -> RequestRecord | None:
    """The recorded state of a request, or None if the ledger has not seen it (yet).

    Callers check `tenant` themselves before showing it to anyone.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    statement = select(
        requests.c.id,
        requests.c.tenant,
        requests.c.api_key_id,
        requests.c.model,
        requests.c.lane,
        requests.c.status,
        requests.c.result,
        requests.c.created_at,
        requests.c.finished_at,
    ).where(requests.c.id == request_id)
    with database_errors(engine):
        async with engine.connect() as connection:
            row = (await connection.execute(statement)).one_or_none()
    if row is None:
        return None
    return RequestRecord(
        id=row.id,
        tenant=row.tenant,
        api_key_id=row.api_key_id,
        model=row.model,
        lane=Lane(row.lane) if row.lane is not None else None,
        status=RequestStatus(row.status),
        result=row.result,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )
