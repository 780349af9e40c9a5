"""Batches and monthly budgets: a batch is admitted whole, before any line is published.

The launcher adds up an estimate of every valid line (prompt tokens plus `max_tokens`, or
256 when absent, at the dearest catalog price in force for the model) and asks for one
hold under the batch id with `sluice_admit`. A refused batch fails with
`insufficient_quota` and publishes nothing; an admitted one keeps its hold until it ends
(completed, expired or cancelled), while the ledger adds each line's real cost as it is
recorded — so, like an HTTP request, a batch can never take a budget past its limit by
more than the gap between its estimate and its real cost.

Key RPM/TPM limits do not apply to batch lines: they are paced by the provider budgets
and run only on spare capacity (the batch lane).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from broker.estimates import Estimator, RequestBody
from broker.stores.admission import (
    Charge,
    Limits,
    PostgresAdmissionStore,
    describe_scope,
    month_of,
    monthly_budget,
    next_month,
)
from broker.stores.keys import find_key_limits
from broker.stores.prices import PriceBook
from broker.stores.tenants import get_tenant

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine


class BatchEstimate:
    """The running total of a batch's estimated tokens and cost (`broker.estimates`)."""

    def __init__(self, book: PriceBook, estimator: Estimator, at: datetime | None = None,
                 served: Callable[[str], str] = str):
        self._book = book
        self._estimator = estimator
        self._served = served  # the model serving a name a line gives (an alias's target)
        self.at = at or datetime.now(UTC)
        self.tokens = 0
        self.usd = Decimal(0)

    def add(self, body: RequestBody) -> None:
        """Count one line as admission would count the same request."""
        line = self._estimator.for_request(body, self._served(body.model), self._book, self.at)
        self.tokens += line.tokens
        self.usd += line.usd or Decimal(0)


async def batch_limits(engine: AsyncEngine, tenant: str, api_key_id: str | None) -> Limits:
    """The monthly budgets a batch of `tenant`, submitted with `api_key_id`, draws from."""
    settings = await get_tenant(engine, tenant)
    key = await find_key_limits(engine, api_key_id) if api_key_id else None
    budgets = (
        monthly_budget(f"tenant:{tenant}", settings.monthly_budget_usd,
                       settings.monthly_budget_tokens),
        monthly_budget(f"key:{api_key_id}", key.monthly_budget_usd, key.monthly_budget_tokens)
        if key is not None else None,
    )
    return Limits(f"key:{api_key_id}",
                  budgets=tuple(budget for budget in budgets if budget is not None))


async def admit_batch(engine: AsyncEngine, batch_id: str, limits: Limits,
                      estimate: BatchEstimate) -> str | None:
    """Hold the batch's estimate on its budgets; the refusal's message, or None."""
    if not limits.budgets:
        return None
    store = PostgresAdmissionStore(engine)
    decision = await store.admit(limits, Charge(batch_id, estimate.tokens, estimate.usd,
                                                estimate.at))
    if decision.admitted:
        return None
    scope, _, kind = (decision.refused_by or "").rpartition(" ")
    unit = "USD" if kind == "monthly_budget_usd" else "token"
    resets = next_month(month_of(estimate.at))
    return (f"The batch is estimated at up to ${estimate.usd:.6f} ({estimate.tokens} "
            f"tokens); the monthly {unit} budget of {describe_scope(scope)} has no room for "
            f"it. It resets on {resets:%Y-%m-%d}; submit fewer lines or ask an admin to "
            "raise the budget.")


async def release_batch(engine: AsyncEngine, batch_id: str) -> None:
    """End a finished batch's hold (its lines' real cost is in the ledger by now)."""
    await PostgresAdmissionStore(engine).release([batch_id])
