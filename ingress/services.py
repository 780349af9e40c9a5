"""What the HTTP edge needs from the rest of the system, as narrow protocols.

The composition root passes real implementations (Kafka, PostgreSQL); unit tests pass
in-memory ones.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from broker.batches.settings import BatchSettings
from broker.config import SluiceConfig
from broker.settings import IngressSettings, KafkaSettings
from broker.webhooks.settings import WebhookSettings
from schemas import InferenceRequest

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True)
class LedgerAccess:
    """What the admin, usage, webhook and batch routes need: the ledger database."""

    engine: AsyncEngine


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant and the API key it used."""

    tenant: str
    api_key_id: str
    # None: any model. A key limited to some models gets 404 model_not_found for the others.
    models: frozenset[str] | None = None
    # The key's own limits (None: not limited); its tenant's budgets are looked up apart.
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget_usd: Decimal | None = None
    monthly_budget_tokens: int | None = None
    # Guardrail policies of the key, applied after its model's own (README "Guardrails").
    guardrails: tuple[str, ...] | None = None

    def may_use(self, model: str) -> bool:
        """Whether this caller may call `model`."""
        return self.models is None or model in self.models


class ApiKeyFinder(Protocol):
    """Resolves a bearer secret to its caller (cached; no database trip per request)."""

    async def principal(self, secret: str, *, cached_only: bool = False) -> Principal | None:
        """The caller owning `secret`, or None if unknown or revoked (or, with
        `cached_only`, not known without asking the database)."""
        ...


class Admission(Protocol):
    """Decides whether a caller's request may be queued (rate limits, monthly budgets)."""

    async def admit(self, principal: Principal, request: InferenceRequest) -> bool:
        """Count and hold `request` for `principal`; True if anything was held.

        Raises:
            LimitExceeded: a limit refused it (nothing was counted or held).
        """
        ...

    async def release(self, request_id: str) -> None:
        """Undo the hold of a request that was admitted but never queued."""
        ...


class StoredRequest(Protocol):
    """A request as the ledger recorded it (read-only)."""

    @property
    def id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def result(self) -> dict[str, Any] | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime | None: ...


class RequestFinder(Protocol):
    """Reads requests of record."""

    async def find(self, request_id: str) -> StoredRequest | None:
        """The request, or None if the ledger has not seen it."""
        ...


class ResultAnnouncements(Protocol):
    """Final results as the ledger announces them (`broker.stores.notifications`)."""

    @property
    def listening(self) -> bool:
        """Whether announcements are coming now (else waiters must look themselves)."""
        ...

    def watch(self, request_id: str) -> AbstractContextManager[asyncio.Event]:
        """An event set when `request_id` is announced final, while the block runs."""
        ...

    async def start(self) -> None:
        """Start listening (in the background)."""
        ...

    async def stop(self) -> None:
        """Stop listening."""
        ...


class RecentlyAccepted:
    """Ids this instance handed out for polling lately (202, or 504 before the answer came),
    so a poll right after does not answer 404.

    The ledger records a request within milliseconds of its acceptance; this bridges that
    window. Bounded in size and age so it never grows without limit. A synchronous caller
    answered in time gets no entry: it has its answer, and at 1,400 requests/s thirty
    seconds of entries held ~12 MB of the ingress's memory for ids nobody polls.
    """

    def __init__(
        self,
        max_entries: int = 50_000,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._entries: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock

    def remember(self, request_id: str, tenant: str, model: str) -> None:
        """Note an accepted request."""
        now = self._clock()
        self._entries[request_id] = (tenant, model, now)
        # Entries are in acceptance order, so the expired ones are at the front: memory
        # follows the request rate over the last `ttl_s`, not the total ever accepted.
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if len(self._entries) <= self._max_entries and now - oldest[2] <= self._ttl_s:
                break
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, request_id: str) -> tuple[str, str] | None:
        """(tenant, model) of a recently accepted request, or None."""
        entry = self._entries.get(request_id)
        if entry is None or self._clock() - entry[2] > self._ttl_s:
            return None
        return entry[0], entry[1]


@dataclass(frozen=True)
class IngressServices:
    """Everything `create_app` needs."""

    settings: IngressSettings
    kafka: KafkaSettings
    config: SluiceConfig
    api_keys: ApiKeyFinder
    requests: RequestFinder
    # Read at the edge like every setting: the SSRF allowlist of X-Webhook-URL and the
    # Batch API's file storage and limits.
    webhooks: WebhookSettings
    batches: BatchSettings
    # Admin keys API and usage queries (ingress/admin.py); None leaves those routes out.
    ledger: LedgerAccess | None = None
    # Key rate limits and monthly budgets (broker/admission.py); None admits everything.
    admission: Admission | None = None
    # Wakes long polls when their result is recorded; None: long polls poll.
    announcements: ResultAnnouncements | None = None

    def ingress_id(self) -> str:
        """This instance's id, naming its reply topic."""
        return self.settings.ingress_id or f"i{uuid.uuid4().hex[:12]}"
