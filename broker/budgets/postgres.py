"""Budgets shared by every worker process: state in PostgreSQL, one statement per change.

Reserve and settle each call one SQL function (migration 0003) that locks the
deployment's row, refills, checks and debits in the same statement: one round trip, no
read-then-write race between workers, and the database's clock for every worker. A 429
and learned limits are one `UPDATE` each.

When PostgreSQL is slow or down, calls raise `DatabaseUnavailable` (or time out): the
worker then sends nothing to that deployment (fail closed). Requests wait in memory, the
pool's slots fill, its partitions pause and the rest stays in Kafka; nothing is lost and
nothing overspends. A reservation whose answer was lost still counts until its lease
ends, which errs on the safe side.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.budgets.algorithm import BucketShape, BucketState, Vector
from broker.budgets.store import Backoff, Grant, describe
from broker.errors import DatabaseUnavailable
from broker.stores.database import database_errors

_NOW = "coalesce(CAST(:now AS float8), extract(epoch FROM clock_timestamp()))"

_RESERVE = text(
    "SELECT granted, wait_s, lease, remaining FROM sluice_budget_reserve(:deployment, "
    "CAST(:limits AS float8[]), CAST(:costs AS float8[]), :window, :burst, :guard, "
    ":recovery, :max_concurrency, :lease_s, :margin, CAST(:now AS float8))"
)
_SETTLE = text(
    "SELECT sluice_budget_settle(:deployment, CAST(:limits AS float8[]), "
    "CAST(:reserved AS float8[]), CAST(:used AS float8[]), :window, :burst, :guard, "
    ":recovery, :lease, CAST(:now AS float8))"
)
_RATE_LIMITED = text(f"""
UPDATE budget_state SET
    blocked_until = greatest(blocked_until, {_NOW} + :block_s),
    levels = '{{0,0,0,0}}', updated_at = {_NOW}, rate_limited = rate_limited + 1,
    scale = CASE WHEN {_NOW} - scale_at >= :gap_s THEN greatest(:floor, least(1.0,
        scale + :recovery * ({_NOW} - scale_at) / :window) * :decrease) ELSE scale END,
    scale_at = CASE WHEN {_NOW} - scale_at >= :gap_s THEN {_NOW} ELSE scale_at END
WHERE deployment = :deployment
""")
_LEARN = text(
    "UPDATE budget_state SET learned = CAST(:learned AS float8[]) WHERE deployment = :deployment"
)
_READ = text(f"SELECT *, {_NOW} AS now FROM budget_state WHERE deployment = :deployment")


class PostgresBudgetStore:
    """Budget state in the `budget_state` table.

    Args:
        engine: The worker's engine.
        timeout_s: A statement slower than this counts as "PostgreSQL unavailable".
        now: A fixed clock for tests; None uses the database's clock (production).
    """

    def __init__(self, engine: AsyncEngine, *, timeout_s: float = 2.0,
                 now: float | None = None) -> None:
        # Each statement is atomic by itself: autocommit spares BEGIN and COMMIT round trips.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._timeout_s = timeout_s
        self.now = now

    async def _run(self, statement: Any, params: dict[str, Any]) -> Any:
        params = {**params, "now": self.now}
        with database_errors(self._engine):
            try:
                async with asyncio.timeout(self._timeout_s):
                    async with self._engine.connect() as connection:
                        result = await connection.execute(statement, params)
                        return result.first() if result.returns_rows else None
            except TimeoutError as exc:
                raise DatabaseUnavailable(
                    f"budget statement took over {self._timeout_s}s") from exc

    @staticmethod
    def _shape(shape: BucketShape) -> dict[str, Any]:
        return {"limits": list(shape.limits), "window": shape.window_s, "burst": shape.burst,
                "guard": shape.guard_s, "recovery": shape.recovery}

    async def reserve(self, deployment: str, shape: BucketShape, costs: Vector,
                      margin: float = 0.0) -> Grant:
        """See `BudgetStore.reserve`."""
        row = await self._run(_RESERVE, {
            "deployment": deployment, **self._shape(shape), "costs": list(costs),
            "max_concurrency": shape.max_concurrency, "lease_s": shape.lease_s,
            "margin": margin,
        })
        remaining = tuple(row.remaining)
        return Grant(bool(row.granted), float(row.wait_s), float(row.lease),
                     (remaining[0], remaining[1], remaining[2], remaining[3]))

    async def settle(self, deployment: str, shape: BucketShape, reserved: Vector,
                     used: Vector, lease: float) -> None:
        """See `BudgetStore.settle`."""
        await self._run(_SETTLE, {
            "deployment": deployment, **self._shape(shape), "reserved": list(reserved),
            "used": list(used), "lease": lease,
        })

    async def rate_limited(self, deployment: str, shape: BucketShape, backoff: Backoff) -> None:
        """See `BudgetStore.rate_limited`."""
        await self._run(_RATE_LIMITED, {
            "deployment": deployment, "block_s": backoff.block_s, "gap_s": backoff.gap_s,
            "floor": backoff.floor, "decrease": backoff.decrease,
            "recovery": shape.recovery, "window": shape.window_s,
        })

    async def learn(self, deployment: str, limits: Vector) -> None:
        """See `BudgetStore.learn`."""
        await self._run(_LEARN, {"deployment": deployment, "learned": list(limits)})

    async def snapshot(self, deployment: str, shape: BucketShape) -> dict[str, Any]:
        """See `BudgetStore.snapshot`."""
        row = await self._run(_READ, {"deployment": deployment})
        if row is None:
            return {"window_s": shape.window_s, "state": "unused"}
        state = BucketState(
            updated_at=row.updated_at, scale_at=row.scale_at, levels=list(row.levels),
            leases=list(row.leases), reserved=list(row.reserved), used=list(row.used),
            learned=list(row.learned), blocked_until=row.blocked_until, scale=row.scale,
            requests_granted=row.requests_granted, rate_limited=row.rate_limited,
        )
        return describe(shape, state, float(row.now))
