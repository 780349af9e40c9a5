"""API keys: creation, lookup by hash, and a TTL cache for the HTTP edge.

Only the sha256 of a secret is stored. Secrets carry 192 random bits, so a plain (unsalted,
fast) hash is safe: there is nothing to brute-force, and lookup stays one indexed equality.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.errors import DatabaseUnavailable
from broker.stores.access_lists import checked_cidrs, checked_role
from broker.stores.database import database_errors
from broker.stores.tables import api_keys

log = logging.getLogger("sluice.keys")
EntryT = TypeVar("EntryT")
_OUTAGE_RETRY_S = 5.0

SECRET_PREFIX = "sk-sluice-"
_SHOWN_CHARS = len(SECRET_PREFIX) + 4  # "sk-sluice-ab12": enough to tell keys apart


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A freshly generated key; `secret` exists only here and is shown to its owner once."""

    id: str
    secret: str
    prefix: str
    key_hash: str


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What a key may do; None everywhere means "no limit of this kind"."""

    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    monthly_budget_usd: Decimal | None = None
    expires_at: datetime | None = None
    monthly_budget_tokens: int | None = None
    # Guardrail policies the key's requests pass after their model's own (None: none).
    guardrails: tuple[str, ...] | None = None
    # admin, tenant_admin, member or analyst (ingress/auth.py); read where a request
    # arrives without ingress (Kafka-native).
    role: str = "member"
    # CIDRs the key may (not) be used from, normalised (`10.0.0.0/8`); None: no list. The
    # edge enforces them through `broker.stores.access_lists.AccessCache`, with the
    # tenant's lists; here they are what the key was given, for creation and display.
    ip_allow: tuple[str, ...] | None = None
    ip_deny: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored API key (never the secret)."""

    id: str
    tenant: str
    name: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    limits: KeyLimits = field(default_factory=lambda: KeyLimits())
    # Not part of a key's identity: every lookup stamps it.
    last_used_at: datetime | None = field(default=None, compare=False)

    def may_use(self, model: str) -> bool:
        """Whether this key may call `model` (a key without a model list may call any)."""
        return self.limits.models is None or model in self.limits.models


def hash_secret(secret: str) -> str:
    """The stored form of a secret: sha256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_api_key() -> NewApiKey:
    """A new random key: `sk-sluice-` plus 32 URL-safe characters (192 bits)."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(24)
    return NewApiKey(
        id=f"key_{secrets.token_hex(6)}",
        secret=secret,
        prefix=secret[:_SHOWN_CHARS],
        key_hash=hash_secret(secret),
    )


def _record(row: Any) -> ApiKeyRecord:  # a Row of _COLUMNS (typing differs in SQLAlchemy 2.0/2.1)
    return ApiKeyRecord(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        limits=KeyLimits(
            models=frozenset(row.models) if row.models is not None else None,
            rpm=row.rpm,
            tpm=row.tpm,
            monthly_budget_usd=row.monthly_budget_usd,
            expires_at=row.expires_at,
            monthly_budget_tokens=row.monthly_budget_tokens,
            guardrails=tuple(row.guardrails) if row.guardrails else None,
            role=row.role or "member",
            ip_allow=tuple(row.ip_allow) if row.ip_allow else None,
            ip_deny=tuple(row.ip_deny) if row.ip_deny else None,
        ),
        last_used_at=row.last_used_at,
    )


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.tenant,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
    api_keys.c.models,
    api_keys.c.rpm,
    api_keys.c.tpm,
    api_keys.c.monthly_budget_usd,
    api_keys.c.expires_at,
    api_keys.c.last_used_at,
    api_keys.c.monthly_budget_tokens,
    api_keys.c.guardrails,
    api_keys.c.role,
    api_keys.c.ip_allow,
    api_keys.c.ip_deny,
)


async def create_api_key(
    engine: AsyncEngine, tenant: str, name: str | None = None, limits: KeyLimits | None = None
) -> tuple[str, ApiKeyRecord]:
    """Create and store a key for `tenant`, with optional `limits` (its role and IP lists
    included, in the same statement: no key exists even briefly with more rights or fewer
    address limits than it was created with).

    Returns:
        The plaintext secret (the only time it is available) and the stored record.

    Raises:
        InvalidRequest: an unknown role, or an IP list entry that is not a CIDR.
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    new = generate_api_key()
    limits = limits or KeyLimits()
    role = checked_role(limits.role)
    ip_allow = checked_cidrs(limits.ip_allow, "ip_allow")
    ip_deny = checked_cidrs(limits.ip_deny, "ip_deny")
    statement = (
        api_keys.insert()
        .values(
            id=new.id, tenant=tenant, name=name, prefix=new.prefix, key_hash=new.key_hash,
            models=sorted(limits.models) if limits.models is not None else None,
            rpm=limits.rpm, tpm=limits.tpm, monthly_budget_usd=limits.monthly_budget_usd,
            monthly_budget_tokens=limits.monthly_budget_tokens, expires_at=limits.expires_at,
            guardrails=list(limits.guardrails) if limits.guardrails else None,
            role=role, ip_allow=ip_allow or None, ip_deny=ip_deny or None,
        )
        .returning(*_COLUMNS)
    )
    with database_errors(engine):
        async with engine.begin() as connection:
            row = (await connection.execute(statement)).one()
    return new.secret, _record(row)


async def find_api_key(engine: AsyncEngine, secret: str) -> ApiKeyRecord | None:
    """The active key whose secret this is, or None (unknown, revoked or expired).

    Also stamps `last_used_at`; behind `ApiKeyCache` that is once per cache miss, not once
    per request.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    if not secret.startswith(SECRET_PREFIX):
        return None  # not one of ours: no need to ask the database
    statement = (
        update(api_keys)
        .where(
            api_keys.c.key_hash == hash_secret(secret),
            api_keys.c.revoked_at.is_(None),
            or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > func.now()),
        )
        .values(last_used_at=func.now())
        .returning(*_COLUMNS)
    )
    with database_errors(engine):
        async with engine.begin() as connection:
            row = (await connection.execute(statement)).one_or_none()
    return None if row is None else _record(row)


async def find_key(engine: AsyncEngine, key_id: str) -> ApiKeyRecord | None:
    """The key with id `key_id`, revoked or expired ones included; None if there is none.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    statement = select(*_COLUMNS).where(api_keys.c.id == key_id)
    with database_errors(engine):
        async with engine.connect() as connection:
            row = (await connection.execute(statement)).one_or_none()
    return None if row is None else _record(row)


async def find_key_limits(engine: AsyncEngine, key_id: str) -> KeyLimits | None:
    """The limits of key `key_id` (revoked or not), or None if there is no such key."""
    record = await find_key(engine, key_id)
    return None if record is None else record.limits


async def find_active_key(engine: AsyncEngine, key_id: str) -> ApiKeyRecord | None:
    """The key with id `key_id` if it is neither revoked nor expired, else None.

    For proofs that name a key instead of presenting its secret (signed Kafka-native
    requests, `broker.signing`); does not stamp `last_used_at`.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    statement = select(*_COLUMNS).where(
        api_keys.c.id == key_id,
        api_keys.c.revoked_at.is_(None),
        or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > func.now()),
    )
    with database_errors(engine):
        async with engine.connect() as connection:
            row = (await connection.execute(statement)).one_or_none()
    return None if row is None else _record(row)


async def revoke_api_key(engine: AsyncEngine, key_id: str) -> bool:
    """Revoke a key by id; False if there is no such active key.

    Edges that cache lookups (`ApiKeyCache`) keep accepting it for up to their positive TTL.
    """
    statement = (
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(api_keys.c.id)
    )
    with database_errors(engine):
        async with engine.begin() as connection:
            return (await connection.execute(statement)).one_or_none() is not None


async def list_api_keys(engine: AsyncEngine, tenant: str | None = None) -> list[ApiKeyRecord]:
    """Every key of `tenant` (or of every tenant), oldest first, revoked ones included."""
    statement = select(*_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.id)
    if tenant is not None:
        statement = statement.where(api_keys.c.tenant == tenant)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return [_record(row) for row in rows]


class ApiKeyCache:
    """`find_api_key` behind an in-memory TTL cache, so the edge rarely asks PostgreSQL.

    Misses for the same secret that arrive together share one lookup. Entries are keyed by
    the secret's hash, so plaintext secrets are not kept. A revoked key stays accepted for
    up to `ttl_s`; an unknown key is rejected for `negative_ttl_s` even if created meanwhile.

    While PostgreSQL is away, a known key keeps working from its last lookup for up to
    `max_stale_s` (ingress goes on queueing into Kafka instead of answering 503); once the
    database answers again, the next lookup honours any revocation made meanwhile. Unknown
    keys live in a cache of their own, so a flood of made-up keys cannot push the valid
    ones out.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl_s: float = 30.0,
        negative_ttl_s: float = 5.0,
        max_stale_s: float = 600.0,
        max_entries: int = 10_000,
        max_negative_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        lookup: Callable[[AsyncEngine, str], Awaitable[ApiKeyRecord | None]] | None = None,
    ) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_stale_s = max_stale_s
        self._clock = clock
        self._find = lookup or find_api_key
        # hash -> (fresh until, looked up at, record); kept past freshness for outages.
        self._known = _Bounded[tuple[float, float, ApiKeyRecord]](max_entries)
        self._unknown = _Bounded[float](max_negative_entries)  # hash -> rejected until
        self._lookups: dict[str, asyncio.Future[ApiKeyRecord | None]] = {}

    async def get(self, secret: str, *, cached_only: bool = False) -> ApiKeyRecord | None:
        """The active key for `secret`, or None (with `cached_only`, also when only a
        database lookup could tell).

        Raises:
            DatabaseUnavailable: PostgreSQL cannot be reached and the key was not known
                within `max_stale_s`.
        """
        key = hash_secret(secret)
        now = self._clock()
        known = self._known.get(key)
        if known is not None and known[0] > now:
            return _unexpired(known[2])
        rejected_until = self._unknown.get(key)
        if rejected_until is not None and rejected_until > now:
            return None
        if cached_only:
            return None
        pending = self._lookups.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(key, secret))
            self._lookups[key] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(key, None))
        # Shielded: one caller giving up must not cancel the lookup the others wait for.
        return _unexpired(await asyncio.shield(pending))

    def invalidate(self, secret: str | None = None) -> None:
        """Forget one secret's entry, or every entry."""
        if secret is None:
            self._known.clear()
            self._unknown.clear()
        else:
            self._known.pop(hash_secret(secret))
            self._unknown.pop(hash_secret(secret))

    async def _lookup(self, key: str, secret: str) -> ApiKeyRecord | None:
        try:
            record = await self._find(self._engine, secret)
        except DatabaseUnavailable:
            known = self._known.get(key)
            now = self._clock()
            if known is None or now - known[1] > self._max_stale_s:
                raise
            _, looked_up, record = known
            log.warning("PostgreSQL unavailable: key %s accepted from its lookup %.0fs ago",
                        record.id, now - looked_up)
            # Asked again in a few seconds, not on every request: each try waits for a
            # connection that will not come.
            self._known.put(key, (now + _OUTAGE_RETRY_S, looked_up, record))
            return record
        now = self._clock()
        if record is None:
            self._known.pop(key)  # revoked or expired since: never served stale again
            self._unknown.put(key, now + self._negative_ttl_s)
        else:
            self._unknown.pop(key)
            self._known.put(key, (now + self._ttl_s, now, record))
        return record


class _Bounded(Generic[EntryT]):
    """A dict of at most `size` entries; putting one more drops the oldest put."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[str, EntryT] = {}

    def get(self, key: str) -> EntryT | None:
        return self._entries.get(key)

    def put(self, key: str, value: EntryT) -> None:
        self._entries.pop(key, None)
        while len(self._entries) >= self._size:
            self._entries.pop(next(iter(self._entries)))  # dicts keep insertion order
        self._entries[key] = value

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def _unexpired(record: ApiKeyRecord | None) -> ApiKeyRecord | None:
    # A cached key must not outlive its expiry by the cache's TTL.
    expires_at = record.limits.expires_at if record is not None else None
    if expires_at is not None and expires_at <= datetime.now(UTC):
        return None
    return record
