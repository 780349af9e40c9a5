"""Admission: turn a caller's limits into one decision before anything is called.

Ingress admits every request before Kafka sees it; workers admit the Kafka-native requests
signed by an API key (`workers.inference.provenance`) before calling a provider, with the
same limits and the same estimate, so no door skips a key's rate limits or a budget.

Callers whose key and tenant have no limits pay nothing here (a cached tenant lookup).
Others pay one token count and one round trip to PostgreSQL (`sluice_admit`): that is what
makes a budget hold across every ingress instance — a per-instance counter would let N
instances admit N times the budget, which is exactly the failure this product exists to
avoid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from broker.access import AccessGate
from broker.config import SluiceConfig
from broker.errors import LimitExceeded
from broker.estimates import Estimator
from broker.stores.access import AccessStore
from broker.stores.admission import (
    AdmissionStore,
    Charge,
    Decision,
    Limits,
    PostgresAdmissionStore,
    describe_scope,
    monthly_budget,
    next_month,
)
from broker.stores.keys import ApiKeyRecord
from broker.stores.prices import PriceBook, PriceCache
from broker.stores.tenants import TenantCache, TenantSettings
from schemas import InferenceRequest

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)


class TenantLookup(Protocol):
    """Tenant settings, cached (broker.stores.tenants.TenantCache)."""

    async def get(self, name: str) -> TenantSettings:
        """The settings of tenant `name`."""
        ...


class Caller(Protocol):
    """Who asks: a tenant and the key it used, with the key's own limits (None: none).

    `ingress.services.Principal` is one; `KeyCaller` another.
    """

    @property
    def tenant(self) -> str:
        """The tenant billed."""
        ...

    @property
    def api_key_id(self) -> str:
        """The key used."""
        ...

    @property
    def rpm(self) -> int | None:
        """The key's requests per minute."""
        ...

    @property
    def tpm(self) -> int | None:
        """The key's tokens per minute."""
        ...

    @property
    def monthly_budget_usd(self) -> Decimal | None:
        """The key's monthly budget in USD."""
        ...

    @property
    def monthly_budget_tokens(self) -> int | None:
        """The key's monthly budget in tokens."""
        ...


@dataclass(frozen=True, slots=True)
class KeyCaller:
    """A `Caller` from a stored key (a Kafka-native client, authenticated by signature)."""

    tenant: str
    api_key_id: str
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget_usd: Decimal | None = None
    monthly_budget_tokens: int | None = None

    @classmethod
    def of(cls, key: ApiKeyRecord) -> KeyCaller:
        """The caller behind `key`."""
        limits = key.limits
        return cls(key.tenant, key.id, limits.rpm, limits.tpm, limits.monthly_budget_usd,
                   limits.monthly_budget_tokens)


class PriceLookup(Protocol):
    """The price catalog, cached (broker.stores.prices.PriceCache)."""

    async def book(self) -> PriceBook:
        """Every stored price."""
        ...


def limits_of(principal: Caller, tenant: TenantSettings) -> Limits:
    """The limits that apply to a caller: its key's rate and budgets, its tenant's budgets."""
    budgets = (
        monthly_budget(f"tenant:{tenant.name}", tenant.monthly_budget_usd,
                       tenant.monthly_budget_tokens),
        monthly_budget(f"key:{principal.api_key_id}", principal.monthly_budget_usd,
                       principal.monthly_budget_tokens),
    )
    return Limits(f"key:{principal.api_key_id}", principal.rpm, principal.tpm,
                  tuple(budget for budget in budgets if budget is not None),
                  queue_tenant=tenant.name, max_queued=tenant.max_queued_requests)


# A full queue frees a place whenever one of the tenant's requests finishes: soon, but
# nobody can say exactly when. Long enough not to turn a full queue into a retry storm.
QUEUE_FULL_RETRY_S = 2.0


class AdmissionControl:
    """Estimates a request, asks the store, explains refusals (ingress.services.Admission)."""

    def __init__(self, store: AdmissionStore, tenants: TenantLookup, prices: PriceLookup,
                 config: SluiceConfig, access: AccessGate | None = None):
        self._store = store
        self._config = config
        # Models that require approval (README "Access approval"); None: nobody is approved.
        self._access = access or AccessGate(None)
        self._tenants = tenants
        self._prices = prices
        self._estimator = Estimator(config)
        self._unpriced_warned: set[str] = set()

    async def admit(self, principal: Caller, request: InferenceRequest) -> bool:
        """Admit `request` (holding its estimate), or raise `LimitExceeded` saying why.

        Returns whether anything was held (False: the caller has no limits).

        Raises:
            LimitExceeded: a limit refused it (nothing was held).
            DatabaseUnavailable: PostgreSQL cannot be reached (nothing was held).
        """
        limits = limits_of(principal, await self._tenants.get(principal.tenant))
        if not limits.any:
            return False
        tokens, usd = await self.estimate(request)
        charge = Charge(request.id, tokens, usd, request.created_at)
        decision = await self._store.admit(limits, charge)
        if not decision.admitted:
            raise self._refusal(decision, limits, charge)
        return True

    async def require_access(self, principal: Caller, request: InferenceRequest) -> None:
        """Return if the request's model needs no approval or the caller has it.

        Ingress checks at its own door (with a cache it clears on decisions); workers call
        this for Kafka-native requests, which never passed that door.

        Raises:
            AccessNotApproved: the model requires approval the caller does not have.
            DatabaseUnavailable: PostgreSQL cannot be reached.
        """
        model = self._config.models.get(request.model)
        if model is not None and model.requires_approval:
            await self._access.require(principal.tenant, principal.api_key_id,
                                       f"model:{request.model}")

    async def release(self, request_id: str) -> None:
        """End the hold of a request that will never run (e.g. Kafka refused it)."""
        await self._store.release([request_id])

    async def estimate(self, request: InferenceRequest) -> tuple[int, Decimal]:
        """Tokens and the cost of the dearest deployment that may serve the request
        (`broker.estimates`): an upper bound, so failover cannot overspend a budget."""
        estimate = self._estimator.for_request(request.body, request.model,
                                               await self._prices.book(), request.created_at)
        if estimate.usd is None and request.model not in self._unpriced_warned:
            self._unpriced_warned.add(request.model)
            logger.warning(
                "admission: no price for model %r; USD budgets cannot count its calls "
                "(add one with `sluice prices set %s --input … --output …`)",
                request.model, request.model,
            )
        return estimate.tokens, estimate.usd or Decimal(0)

    def _refusal(self, decision: Decision, limits: Limits, charge: Charge) -> LimitExceeded:
        scope, _, limit = (decision.refused_by or "").rpartition(" ")
        who = describe_scope(scope)
        if limit == "queue_full":
            holder = who[:1].upper() + who[1:]
            return LimitExceeded(
                f"{holder} has {limits.max_queued} requests queued and unfinished, "
                f"its limit. Retry after {QUEUE_FULL_RETRY_S:.0f} s, once some have "
                "finished, or ask an admin for a higher limit "
                "(`sluice tenants set NAME --max-queued N`).",
                code="queue_full", retry_after_s=QUEUE_FULL_RETRY_S)
        if limit in ("rpm", "tpm"):
            if decision.retry_after_s is not None and decision.retry_after_s < 0:
                return LimitExceeded(
                    f"This request is estimated at {charge.tokens} tokens (prompt plus "
                    f"max_tokens), more than {who}'s limit of {limits.tpm} tokens per minute; "
                    "lower max_tokens or shorten the prompt.",
                    code="rate_limit_exceeded", retry_after_s=None)
            value = limits.rpm if limit == "rpm" else limits.tpm
            unit = "requests" if limit == "rpm" else "tokens"
            wait = decision.retry_after_s or 1.0
            return LimitExceeded(
                f"Rate limit reached for {who}: {value} {unit} per minute. "
                f"Retry after {wait:.1f} s, or ask an admin for a higher limit.",
                code="rate_limit_exceeded", retry_after_s=wait)
        period = datetime(charge.at.year, charge.at.month, 1, tzinfo=UTC)
        resets = next_month(period.date())
        budget = next(b for b in limits.budgets if b.scope == scope)
        amount = (f"${budget.usd}" if limit == "monthly_budget_usd"
                  else f"{budget.tokens} tokens")
        estimate = (f"${charge.usd:.6f}" if limit == "monthly_budget_usd"
                    else f"{charge.tokens} tokens")
        reset_at = datetime(resets.year, resets.month, 1, tzinfo=UTC)
        return LimitExceeded(
            f"The monthly budget of {who} ({amount} for {period:%Y-%m}) has no room for this "
            f"request (estimated at up to {estimate}, counting requests still running). It "
            f"resets on {resets:%Y-%m-%d}; an admin can raise it.",
            code="insufficient_quota",
            retry_after_s=(reset_at - datetime.now(UTC)).total_seconds(),
        )


def postgres_admission(engine: AsyncEngine, config: SluiceConfig) -> AdmissionControl:
    """Admission with state, tenant budgets and prices in PostgreSQL (the latter two cached)."""
    return AdmissionControl(PostgresAdmissionStore(engine), TenantCache(engine),
                            PriceCache(engine), config, AccessGate(AccessStore(engine)))
