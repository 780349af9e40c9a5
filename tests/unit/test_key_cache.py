"""The API key cache while PostgreSQL is away, and under a flood of made-up keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.clock import FakeClock
from broker.errors import DatabaseUnavailable
from broker.stores.keys import ApiKeyCache, ApiKeyRecord, hash_secret

KNOWN = "sk-sluice-known"
RECORD = ApiKeyRecord(id="key_1", tenant="acme", name=None, prefix="sk-sluice-kn",
                      created_at=datetime(2026, 1, 1, tzinfo=UTC), revoked_at=None)


class _Database:
    """Answers lookups like `find_api_key` until told it is down; counts every ask."""

    def __init__(self) -> None:
        self.up = True
        self.revoked = False
        self.asked: list[str] = []

    async def find(self, _: AsyncEngine, secret: str) -> ApiKeyRecord | None:
        self.asked.append(hash_secret(secret))
        if not self.up:
            raise DatabaseUnavailable("PostgreSQL at db:5432 is unreachable")
        return RECORD if secret == KNOWN and not self.revoked else None


def _cache(database: _Database, clock: FakeClock, **options: float) -> ApiKeyCache:
    return ApiKeyCache(cast(AsyncEngine, None), ttl_s=30, negative_ttl_s=5, clock=clock,
                       lookup=database.find, **options)  # type: ignore[arg-type]


async def test_a_known_key_works_through_an_outage_and_revocation_wins_after_it() -> None:
    database, clock = _Database(), FakeClock()
    cache = _cache(database, clock, max_stale_s=600)
    assert await cache.get(KNOWN) == RECORD
    database.up = False
    clock.advance(120)  # past its freshness, PostgreSQL away
    assert await cache.get(KNOWN) == RECORD
    asked = len(database.asked)
    clock.advance(1)
    assert await cache.get(KNOWN) == RECORD
    assert len(database.asked) == asked  # not every request waits for a dead database
    clock.advance(600)  # past the staleness bound: refusing is now the safe answer
    with pytest.raises(DatabaseUnavailable):
        await cache.get(KNOWN)
    database.up, database.revoked = True, True  # revoked during the outage
    assert await cache.get(KNOWN) is None


async def test_an_unknown_key_is_not_served_from_an_outage() -> None:
    database, clock = _Database(), FakeClock()
    cache = _cache(database, clock)
    database.up = False
    with pytest.raises(DatabaseUnavailable):
        await cache.get("sk-sluice-never-seen")


async def test_a_flood_of_made_up_keys_does_not_push_out_a_known_one() -> None:
    database, clock = _Database(), FakeClock()
    cache = ApiKeyCache(cast(AsyncEngine, None), max_entries=2, max_negative_entries=2,
                        clock=clock, lookup=database.find)  # type: ignore[arg-type]
    assert await cache.get(KNOWN) == RECORD
    for number in range(50):
        assert await cache.get(f"sk-sluice-made-up-{number}") is None
    asked = len(database.asked)
    assert await cache.get(KNOWN) == RECORD
    assert len(database.asked) == asked  # still cached
