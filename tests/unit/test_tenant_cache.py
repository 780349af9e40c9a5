"""The tenant cache keeps serving what it loaded while PostgreSQL is away."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import broker.stores.tenants as tenants_module
from broker.clock import FakeClock
from broker.errors import DatabaseUnavailable
from broker.stores.tenants import TenantCache, TenantSettings


async def test_stale_settings_are_served_while_the_database_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    state = {"up": True}

    async def list_tenants(engine: Any) -> list[TenantSettings]:
        calls.append("load")
        if not state["up"]:
            raise DatabaseUnavailable("PostgreSQL is down.")
        return [TenantSettings("acme", monthly_budget_usd=Decimal(5))]

    monkeypatch.setattr(tenants_module, "list_tenants", list_tenants)
    clock = FakeClock(100.0)
    cache = TenantCache(object(), ttl_s=30, clock=clock)  # type: ignore[arg-type]
    assert (await cache.get("acme")).monthly_budget_usd == Decimal(5)
    assert (await cache.get("other")) == TenantSettings("other")
    assert calls == ["load"]  # cached

    state["up"] = False
    clock.now += 31
    assert (await cache.get("acme")).monthly_budget_usd == Decimal(5)  # stale, not a 503
    await cache.get("acme")
    assert calls == ["load", "load"]  # the failure is not retried on every call
    clock.now += 6
    state["up"] = True
    await cache.get("acme")
    assert calls == ["load", "load", "load"]


async def test_nothing_loaded_yet_means_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def list_tenants(engine: Any) -> list[TenantSettings]:
        raise DatabaseUnavailable("PostgreSQL is down.")

    monkeypatch.setattr(tenants_module, "list_tenants", list_tenants)
    with pytest.raises(DatabaseUnavailable):
        await TenantCache(object()).get("acme")  # type: ignore[arg-type]
