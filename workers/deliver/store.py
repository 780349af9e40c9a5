"""The deliverer's PostgreSQL side: deliveries from results, claims, attempts, sweeps.

PostgreSQL is the durable queue of deliveries; memory only holds due times. A delivery is
inserted (idempotently: its id derives from request id and URL) before the Kafka offset of
its result is committed; each attempt first claims a lease on it, so several deliverers
never send the same attempt, and records its outcome in one transaction with the attempt.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.database import database_errors
from broker.webhooks.store import active_secrets
from broker.webhooks.tables import webhook_attempts, webhook_deliveries, webhook_endpoints
from schemas import InferenceResult
from workers.deliver.policy import AttemptOutcome, Verdict

_D = webhook_deliveries.c


log = logging.getLogger("sluice.deliver")


def delivery_id(request_id: str, url: str) -> str:
    """The `webhook-id` of a result's delivery to `url`: the same for every redelivery."""
    return "msg_" + hashlib.sha256(f"{request_id}\n{url}".encode()).hexdigest()[:32]


def payload(result: InferenceResult) -> tuple[str, str]:
    """The event type and the body sent: `{"type", "timestamp", "data": InferenceResult}`."""
    event_type = f"inference.{result.status.value}"
    body = {
        "type": event_type,
        "timestamp": result.finished_at.isoformat(),
        "data": result.model_dump(mode="json", exclude_none=True),
    }
    return event_type, orjson.dumps(body).decode()


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this deliverer holds the lease of, ready for one attempt."""

    id: str
    request_id: str
    tenant: str
    url: str
    payload: str
    attempt: int  # the number of this attempt, 1-based
    attempt_limit: int
    secrets: list[str]
    disabled_reason: str | None
    leased_until: Any = None  # the lease this deliverer holds; a finish must still hold it


def _seconds(value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


class DeliveryStore:
    """Deliveries and attempts in PostgreSQL."""

    def __init__(self, engine: AsyncEngine, *, max_attempts: int, lease_s: float) -> None:
        self._engine = engine
        self._max_attempts = max_attempts
        self._lease_s = lease_s

    async def tenants_with_endpoints(self, tenants: Collection[str]) -> set[str]:
        """Those of `tenants` with at least one subscribed, enabled endpoint."""
        if not tenants:
            return set()
        with database_errors(self._engine):
            async with self._engine.connect() as connection:
                rows = await connection.execute(
                    select(webhook_endpoints.c.tenant).distinct()
                    .where(webhook_endpoints.c.tenant.in_(sorted(tenants)),
                           webhook_endpoints.c.subscribed,
                           webhook_endpoints.c.disabled_at.is_(None))
                )
                return {row[0] for row in rows}

    async def add_results(self, results: Sequence[InferenceResult]) -> list[str]:
        """Insert the deliveries these results call for; return the ids new to the table.

        A result goes to its own `webhook_url` and to every subscribed endpoint of its
        tenant, each URL once; URLs a 410 disabled are skipped.
        """
        tenants = sorted({result.tenant for result in results})
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                rows = (await connection.execute(
                    select(webhook_endpoints.c.tenant, webhook_endpoints.c.url,
                           webhook_endpoints.c.subscribed, webhook_endpoints.c.disabled_at)
                    .where(webhook_endpoints.c.tenant.in_(tenants))
                )).all()
                values = self._plan(results, rows)
                if not values:
                    return []
                statement = (
                    insert(webhook_deliveries).values(values)
                    .on_conflict_do_nothing(index_elements=[_D.id]).returning(_D.id)
                )
                return list((await connection.execute(statement)).scalars())

    def _plan(self, results: Sequence[InferenceResult], endpoints: Sequence[Any]) -> list[
            dict[str, Any]]:
        subscribed: dict[str, list[str]] = {}
        disabled = {(row.tenant, row.url) for row in endpoints if row.disabled_at is not None}
        for row in endpoints:
            if row.subscribed and row.disabled_at is None:
                subscribed.setdefault(row.tenant, []).append(row.url)
        planned: dict[str, dict[str, Any]] = {}
        for result in results:
            urls = [*subscribed.get(result.tenant, []), *filter(None, [result.webhook_url])]
            if not urls:
                continue  # most results: nobody to tell, so no body to render
            event_type, body = payload(result)
            for url in urls:
                if (result.tenant, url) in disabled:
                    continue
                key = delivery_id(result.request_id, url)
                planned.setdefault(key, {
                    "id": key, "request_id": result.request_id, "tenant": result.tenant,
                    "url": url, "event_type": event_type, "payload": body,
                    "attempt_limit": self._max_attempts, "max_attempts": self._max_attempts,
                    "next_attempt_at": func.now(),
                })
        return list(planned.values())

    async def claim(self, delivery: str) -> Claimed | None:
        """Lease `delivery` for one attempt, or None if it is not due, done or leased."""
        lease = _D.leased_until
        statement = (
            update(webhook_deliveries)
            .where(_D.id == delivery, _D.state == "pending",
                   _D.next_attempt_at <= func.now() + _seconds(1.0),
                   or_(lease.is_(None), lease < func.now()))
            .values(leased_until=func.now() + _seconds(self._lease_s))
            .returning(_D.id, _D.request_id, _D.tenant, _D.url, _D.payload, _D.attempts,
                       _D.attempt_limit, _D.leased_until)
        )
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                row = (await connection.execute(statement)).one_or_none()
                if row is None:
                    return None
                reason = (await connection.execute(
                    select(webhook_endpoints.c.disabled_reason).where(
                        webhook_endpoints.c.tenant == row.tenant,
                        webhook_endpoints.c.url == row.url,
                        webhook_endpoints.c.disabled_at.is_not(None))
                )).one_or_none()
                secrets = await active_secrets(connection, row.tenant)
        return Claimed(row.id, row.request_id, row.tenant, row.url, row.payload,
                       row.attempts + 1, row.attempt_limit, secrets,
                       None if reason is None else (reason[0] or "disabled"),
                       row.leased_until)

    async def finish(
        self, claimed: Claimed, outcome: AttemptOutcome, decided: Verdict, delay_s: float,
        started: Any,
    ) -> bool:
        """Record the attempt and the delivery's new state in one transaction.

        Only while this deliverer still holds the lease it claimed: after it expired,
        another deliverer may have claimed the delivery, and its record must stand.
        Returns whether the attempt was recorded.
        """
        final = decided is not Verdict.RETRY
        state = {Verdict.SUCCEEDED: "succeeded", Verdict.RETRY: "pending"}.get(decided, "failed")
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                owned = await connection.execute(
                    update(webhook_deliveries).where(
                        _D.id == claimed.id, _D.leased_until == claimed.leased_until,
                        _D.attempts == claimed.attempt - 1,
                    ).values(
                        state=state, attempts=claimed.attempt, leased_until=None,
                        last_status_code=outcome.status_code, last_error=outcome.error,
                        next_attempt_at=func.now() + _seconds(delay_s),
                        finished_at=func.now() if final else None, updated_at=func.now(),
                    ))
                if owned.rowcount == 0:
                    log.warning("delivery %s: lease lost before attempt %d was recorded "
                                "(another deliverer holds it now)", claimed.id, claimed.attempt)
                    return False
                if outcome.status_code is not None or outcome.error is not None:
                    await connection.execute(webhook_attempts.insert().values(
                        delivery_id=claimed.id, attempt=claimed.attempt,
                        request_id=claimed.request_id, tenant=claimed.tenant, url=claimed.url,
                        address=outcome.address, status_code=outcome.status_code,
                        error=outcome.error, started_at=started, finished_at=func.now(),
                        duration_ms=outcome.duration_ms,
                    ))
                if decided is Verdict.DISABLE:
                    await self._disable(connection, claimed)
        return True

    async def _disable(self, connection: Any, claimed: Claimed) -> None:
        reason = f"410 Gone from {claimed.url} on delivery {claimed.id}"
        statement = insert(webhook_endpoints).values(
            id=f"we_{claimed.id[4:20]}", tenant=claimed.tenant, url=claimed.url,
            subscribed=False, disabled_at=func.now(), disabled_reason=reason,
        )
        await connection.execute(statement.on_conflict_do_update(
            index_elements=[webhook_endpoints.c.tenant, webhook_endpoints.c.url],
            set_={"disabled_at": func.now(), "disabled_reason": reason},
        ))

    async def due(self, limit: int, horizon_s: float) -> list[tuple[str, float]]:
        """Pending, unleased deliveries due within `horizon_s`: (id, seconds until due)."""
        wait = func.extract("epoch", _D.next_attempt_at - func.now())
        statement = (
            select(_D.id, wait.label("wait_s"))
            .where(_D.state == "pending", _D.next_attempt_at <= func.now() + _seconds(horizon_s),
                   or_(_D.leased_until.is_(None), _D.leased_until < func.now()))
            .order_by(_D.next_attempt_at).limit(limit)
        )
        with database_errors(self._engine):
            async with self._engine.connect() as connection:
                rows = (await connection.execute(statement)).all()
        return [(row.id, max(0.0, float(row.wait_s))) for row in rows]
