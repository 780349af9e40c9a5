"""Admission: per-key rate limits and tenant/key monthly budgets, decided before Kafka.

A request is admitted only if

- its key's requests and (estimated) tokens in the last minute stay within the key's RPM
  and TPM: a sliding-window counter (the previous fixed minute's count, weighted by the
  share of it still inside the sliding minute, plus the current minute's count). It lets
  a key burst up to its limit at once, needs one row per key, and is the approximation
  Cloudflare and most API gateways use;
- every monthly budget of its tenant and key (USD and/or tokens) still has room for the
  request's estimated cost: recorded spend + holds of unfinished requests + this request
  must stay within the budget.

Admitting counts the request in the key's window and records a *hold* of its estimate on
every budget scope. The ledger adds the real cost when it records usage and deletes the
hold when it records the final result, so a budget is never overspent by more than the
difference between a request's estimate and its real cost — and the estimate counts
`max_tokens` in full, so it is usually an over-estimate.

`PostgresAdmissionStore` runs the whole decision in one SQL function call (one round trip,
migration 0006) so every ingress instance shares the counts; only callers with a limit pay
for it. `MemoryAdmissionStore` is the in-process fake with the same arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.database import database_errors

RATE_WINDOW_S = 60.0


def window_wait(prev: float, current: float, cost: float, limit: float, elapsed: float,
                window: float) -> float:
    """Seconds until a sliding-window counter lets a call of `cost` through.

    Args:
        prev: The previous fixed window's count.
        current: The current fixed window's count.
        cost: What the call adds (1 request, or its tokens).
        limit: The most a sliding window may hold.
        elapsed: Seconds into the current fixed window.
        window: The window length.

    Returns:
        0 when it may go now; -1 when `cost` alone is over `limit` (it never can).
        SQL twin: `sluice_window_wait` (migration 0006).
    """
    if cost > limit:
        return -1.0
    if prev * (1 - elapsed / window) + current + cost <= limit:
        return 0.0
    if current + cost <= limit:
        return max(0.0, window * (1 - (limit - current - cost) / prev) - elapsed)
    return (window - elapsed) + window * (1 - (limit - cost) / current)


def month_of(moment: datetime) -> date:
    """The budget period containing `moment`: the first day of its month, UTC."""
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def next_month(period: date) -> date:
    """The first day of the period after `period`."""
    return date(period.year + period.month // 12, period.month % 12 + 1, 1)


def describe_scope(scope: str) -> str:
    """`tenant:acme` → "tenant 'acme'"; `key:key_1` → "API key key_1"."""
    kind, _, name = scope.partition(":")
    return f"tenant '{name}'" if kind == "tenant" else f"API key {name}"


@dataclass(frozen=True, slots=True)
class Budget:
    """A monthly budget of one scope (`tenant:<name>` or `key:<id>`); None: no limit."""

    scope: str
    usd: Decimal | None = None
    tokens: int | None = None


def monthly_budget(scope: str, usd: Decimal | None, tokens: int | None) -> Budget | None:
    """The budget of `scope`, or None when it has neither a USD nor a token limit."""
    return None if usd is None and tokens is None else Budget(scope, usd, tokens)


@dataclass(frozen=True, slots=True)
class Limits:
    """Everything that may refuse a caller's request."""

    key_scope: str
    rpm: int | None = None
    tpm: int | None = None
    budgets: tuple[Budget, ...] = ()
    # The tenant whose queue the request counts in, and the cap (None: not counted).
    queue_tenant: str | None = None
    max_queued: int | None = None

    @property
    def any(self) -> bool:
        """Whether anything is limited (callers without limits skip admission)."""
        return bool(self.rpm or self.tpm or self.budgets or self.max_queued is not None)


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request asks for: its id and estimated tokens and cost."""

    request_id: str
    tokens: int
    usd: Decimal
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer: admitted, or which limit refused and when to retry (None: next period).

    `refused_by` is `<scope> rpm|tpm|monthly_budget_usd|monthly_budget_tokens|queue_full`.
    """

    admitted: bool
    refused_by: str | None = None
    retry_after_s: float | None = None


ADMITTED = Decision(True)


class AdmissionStore(Protocol):
    """Shared admission state; `admit` is one atomic decision."""

    async def admit(self, limits: Limits, charge: Charge) -> Decision:
        """Admit `charge` under `limits` (counting and holding it), or say what refused."""
        ...

    async def release(self, request_ids: Sequence[str]) -> None:
        """End the holds of requests that will never run (e.g. Kafka refused them)."""
        ...


def _ordered(budgets: Sequence[Budget]) -> list[Budget]:
    # Every writer locks spend rows in scope order: admissions never deadlock each other.
    return sorted(budgets, key=lambda budget: budget.scope)


class PostgresAdmissionStore:
    """Admission state in PostgreSQL, shared by every ingress instance."""

    _ADMIT = text(
        "SELECT admitted, refused_by, retry_after_s FROM sluice_admit("
        ":request_id, :rate_scope, :rpm, :tpm, :window, CAST(:scopes AS text[]), "
        "CAST(:usd_limits AS numeric[]), CAST(:token_limits AS numeric[]), :period, "
        "CAST(:usd AS numeric), :tokens, :now, :queue_tenant, :max_queued)"
    )
    _RELEASE = text("SELECT sluice_spend_release(CAST(:ids AS text[]))")

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] | None = None):
        # None: the database's clock, so ingress machines with skewed clocks agree.
        self._engine = engine
        self._clock = clock

    async def admit(self, limits: Limits, charge: Charge) -> Decision:
        """See `AdmissionStore.admit`.

        Raises:
            DatabaseUnavailable: PostgreSQL cannot be reached (nothing was admitted).
        """
        budgets = _ordered(limits.budgets)
        rated = bool(limits.rpm or limits.tpm)
        parameters = {
            "request_id": charge.request_id,
            "rate_scope": limits.key_scope if rated else None,
            "rpm": float(limits.rpm or 0),
            "tpm": float(limits.tpm or 0),
            "window": RATE_WINDOW_S,
            "scopes": [budget.scope for budget in budgets],
            "usd_limits": [budget.usd for budget in budgets],
            "token_limits": [budget.tokens for budget in budgets],
            "period": month_of(charge.at),
            "usd": charge.usd,
            "tokens": charge.tokens,
            "now": self._clock() if self._clock is not None else None,
            "queue_tenant": limits.queue_tenant if limits.max_queued is not None else None,
            "max_queued": limits.max_queued,
        }
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                row = (await connection.execute(self._ADMIT, parameters)).one()
        if row.admitted:
            return ADMITTED
        return Decision(False, row.refused_by, row.retry_after_s)

    async def release(self, request_ids: Sequence[str]) -> None:
        """See `AdmissionStore.release`."""
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                await connection.execute(self._RELEASE, {"ids": list(request_ids)})


# Holds of requests that can no longer finish: older than any request lives, or with no
# trace of their request long after admission (ingress crashed before publishing, or the
# message was poison and dead-lettered). Batch holds (under a batch id) end with their
# batch and are left alone.
_STALE_HOLDS = text("""
SELECT sluice_spend_release(array(
    SELECT h.request_id FROM spend_holds h
    WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = h.request_id)
      AND (h.created_at < now() - make_interval(secs => :max_age_s)
           OR (h.created_at < now() - make_interval(secs => :orphan_age_s)
               AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.id = h.request_id)))
    ORDER BY h.created_at
    LIMIT :limit))
""")


_OLD_MOVES = text(
    "DELETE FROM moved_requests WHERE moved_at < now() - make_interval(secs => :max_age_s)")


async def release_stale_holds(engine: AsyncEngine, *, max_age_s: float, orphan_age_s: float,
                              limit: int = 1000) -> int:
    """End up to `limit` holds whose requests cannot finish any more; return how many.

    Without this such a hold would keep its budget reserved and its place in the tenant's
    queue for good.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    parameters = {"max_age_s": max_age_s, "orphan_age_s": orphan_age_s, "limit": limit}
    with database_errors(engine):
        async with engine.begin() as connection:
            # Moved requests are remembered as long as a request may live, like holds.
            await connection.execute(_OLD_MOVES, {"max_age_s": max_age_s})
            return int((await connection.execute(_STALE_HOLDS, parameters)).scalar() or 0)


@dataclass(slots=True)
class _Account:
    spent_usd: Decimal = Decimal(0)
    spent_tokens: int = 0
    reserved_usd: Decimal = Decimal(0)
    reserved_tokens: int = 0


@dataclass(slots=True)
class _Window:
    start: float
    requests: float = 0.0
    tokens: float = 0.0
    prev_requests: float = 0.0
    prev_tokens: float = 0.0


class MemoryAdmissionStore:
    """The fake: one process's admission state with an injectable clock (epoch seconds).

    Also plays the ledger's part (`spend`, `release`) so unit tests can settle.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.accounts: dict[tuple[str, date], _Account] = {}
        self.windows: dict[str, _Window] = {}
        self.holds: dict[str, tuple[tuple[str, ...], date, Decimal, int]] = {}
        self.queued: dict[str, int] = {}  # tenant -> requests counted in its queue
        self._queued_by: dict[str, str] = {}  # request id -> the tenant it counts for

    async def admit(self, limits: Limits, charge: Charge) -> Decision:
        """See `AdmissionStore.admit`."""
        if charge.request_id in self.holds:
            return ADMITTED  # admitted before (a relaunched batch): held once
        period = month_of(charge.at)
        budgets = _ordered(limits.budgets)
        for budget in budgets:
            account = self.accounts.setdefault((budget.scope, period), _Account())
            committed = account.spent_usd + account.reserved_usd
            if budget.usd is not None and (committed + charge.usd > budget.usd
                                           or committed >= budget.usd):
                return Decision(False, f"{budget.scope} monthly_budget_usd")
            if budget.tokens is not None and (account.spent_tokens + account.reserved_tokens
                                              + charge.tokens > budget.tokens):
                return Decision(False, f"{budget.scope} monthly_budget_tokens")
        rated = bool(limits.rpm or limits.tpm)
        if rated:
            refused = self._count(limits, charge.tokens, dry_run=True)
            if refused is not None:
                return refused
        counted = limits.queue_tenant if limits.max_queued is not None else None
        if counted is not None and self.queued.get(counted, 0) >= (limits.max_queued or 0):
            return Decision(False, f"tenant:{counted} queue_full")
        if rated:
            self._count(limits, charge.tokens)
        if counted is not None:
            self.queued[counted] = self.queued.get(counted, 0) + 1
            self._queued_by[charge.request_id] = counted
        if budgets or counted is not None:
            for budget in budgets:
                account = self.accounts[(budget.scope, period)]
                account.reserved_usd += charge.usd
                account.reserved_tokens += charge.tokens
            scopes = tuple(budget.scope for budget in budgets)
            self.holds[charge.request_id] = (scopes, period, charge.usd, charge.tokens)
        return ADMITTED

    def _count(self, limits: Limits, tokens: int, *, dry_run: bool = False) -> Decision | None:
        now = self._clock()
        start = (now // RATE_WINDOW_S) * RATE_WINDOW_S
        window = self.windows.setdefault(limits.key_scope, _Window(start))
        if window.start < start:
            adjacent = window.start == start - RATE_WINDOW_S
            window.prev_requests = window.requests if adjacent else 0.0
            window.prev_tokens = window.tokens if adjacent else 0.0
            window.requests = window.tokens = 0.0
            window.start = start
        elapsed = now - start
        for name, limit, prev, current, cost in (
            ("rpm", limits.rpm, window.prev_requests, window.requests, 1.0),
            ("tpm", limits.tpm, window.prev_tokens, window.tokens, float(tokens)),
        ):
            if limit:
                wait = window_wait(prev, current, cost, limit, elapsed, RATE_WINDOW_S)
                if wait != 0:
                    return Decision(False, f"{limits.key_scope} {name}", wait)
        if dry_run:
            return None
        window.requests += 1
        window.tokens += tokens
        return None

    async def release(self, request_ids: Sequence[str]) -> None:
        """See `AdmissionStore.release` (also what the ledger does for final results)."""
        for request_id in request_ids:
            counted = self._queued_by.pop(request_id, None)
            if counted is not None:
                self.queued[counted] -= 1
            hold = self.holds.pop(request_id, None)
            if hold is None:
                continue
            scopes, period, usd, tokens = hold
            for scope in scopes:
                account = self.accounts[(scope, period)]
                account.reserved_usd = max(Decimal(0), account.reserved_usd - usd)
                account.reserved_tokens = max(0, account.reserved_tokens - tokens)

    def spend(self, scope: str, period: date, usd: Decimal, tokens: int) -> None:
        """Record real usage (the ledger's `sluice_spend_add`)."""
        account = self.accounts.setdefault((scope, period), _Account())
        account.spent_usd += usd
        account.spent_tokens += tokens
