"""The edge's PostgreSQL-backed services: API keys (cached) and requests of record."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.keys import ApiKeyCache
from broker.stores.requests import RequestRecord, get_request
from ingress.services import Principal


class PostgresApiKeys:
    """API keys from PostgreSQL behind an in-memory cache (no database trip per request)."""

    def __init__(self, engine: AsyncEngine, cache: ApiKeyCache | None = None):
        self._cache = cache or ApiKeyCache(engine)

    async def principal(self, secret: str, *, cached_only: bool = False) -> Principal | None:
        """The caller owning `secret`, or None."""
        record = await self._cache.get(secret, cached_only=cached_only)
        if record is None:
            return None
        limits = record.limits
        return Principal(
            tenant=record.tenant, api_key_id=record.id, models=limits.models,
            rpm=limits.rpm, tpm=limits.tpm, monthly_budget_usd=limits.monthly_budget_usd,
            monthly_budget_tokens=limits.monthly_budget_tokens, guardrails=limits.guardrails,
        )


class PostgresRequests:
    """Requests as the ledger recorded them."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def find(self, request_id: str) -> RequestRecord | None:
        """The request, or None if the ledger has not seen it yet."""
        return await get_request(self._engine, request_id)
