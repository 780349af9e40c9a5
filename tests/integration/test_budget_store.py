"""One contract, two stores: the PostgreSQL functions compute what algorithm.py does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from broker.budgets import (
    Backoff,
    BucketShape,
    BudgetStore,
    MemoryBudgetStore,
    PostgresBudgetStore,
)
from broker.clock import FakeClock
from broker.settings import DatabaseSettings
from broker.stores.database import create_engine

pytestmark = pytest.mark.integration

SHAPE = BucketShape(limits=(60, 6000, 0, 0), window_s=10, burst=0.05, guard_s=0.0,
                    max_concurrency=3, lease_s=30)
COST = (1.0, 100.0, 60.0, 40.0)


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest, database_url: str
                ) -> AsyncIterator[tuple[BudgetStore, FakeClock]]:
    if request.param == "memory":
        clock = FakeClock(5000.0)
        yield MemoryBudgetStore(clock), clock
        return
    engine = create_engine(DatabaseSettings(database_url=database_url))
    postgres = PostgresBudgetStore(engine)

    class Tied(FakeClock):
        """The fake clock of the PostgreSQL store: its time is the store's `now`."""

        @property
        def now(self) -> float:
            return postgres.now or 0.0

        @now.setter
        def now(self, value: float) -> None:
            postgres.now = value

    yield postgres, Tied(5000.0)
    await engine.dispose()


async def test_the_same_story_in_both_stores(store: tuple[BudgetStore, FakeClock]) -> None:
    budgets, clock = store
    first = await budgets.reserve("d", SHAPE, COST)
    assert not first.granted  # empty at first
    assert first.wait_s == pytest.approx(1 / (0.95 * 60 / 10))
    clock.now += 20  # full: 3 requests, 300 tokens
    grants = [await budgets.reserve("d", SHAPE, COST) for _ in range(4)]
    assert [g.granted for g in grants] == [True, True, True, False]
    assert grants[2].remaining == pytest.approx((0.0, 0.0, 0.0, 0.0))
    await budgets.settle("d", SHAPE, COST, (1.0, 40.0, 30.0, 10.0), grants[0].lease)
    clock.now += 1
    snapshot = await budgets.snapshot("d", SHAPE)
    assert snapshot["in_flight"] == 2
    assert snapshot["tokens"]["remaining"] == pytest.approx(300)  # refund, then refill to C
    assert snapshot["tokens"]["used"] == 40 and snapshot["tokens"]["reserved"] == 200
    await budgets.learn("d", (30, 0, 0, 0))
    await budgets.rate_limited("d", SHAPE, Backoff(block_s=4, decrease=0.5, gap_s=0))
    blocked = await budgets.reserve("d", SHAPE, COST)
    assert not blocked.granted and blocked.wait_s >= 4 - 1e-9
    snapshot = await budgets.snapshot("d", SHAPE)
    assert snapshot["scale"] == pytest.approx(0.5)
    assert snapshot["requests"]["limit"] == pytest.approx(15)
    assert snapshot["rate_limited"] == 1


async def test_round_trip_cost(database_url: str) -> None:
    """Not a limit, a measurement (printed; -s shows it): one reserve is one round trip."""
    engine = create_engine(DatabaseSettings(database_url=database_url))
    budgets = PostgresBudgetStore(engine)
    shape = BucketShape(limits=(1e9, 0, 0, 0), window_s=10)
    await budgets.reserve("d", shape, COST)
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    calls = 200
    for _ in range(calls):
        grant = await budgets.reserve("d", shape, COST)
        await budgets.settle("d", shape, COST, COST, grant.lease)
    each_ms = (time.perf_counter() - started) * 1000 / (2 * calls)
    print(f"budget statement round trip: {each_ms:.3f} ms")
    assert each_ms < 20
    await engine.dispose()
