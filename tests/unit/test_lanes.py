"""Waiting for budget: interactive first, batch from what is left, nothing sent without it."""

from __future__ import annotations

import asyncio
from typing import NoReturn

from broker.budgets import MemoryBudgetStore
from broker.config import parse_config
from schemas import Lane
from workers.inference.lanes import BudgetGates

CONFIG = parse_config({
    "models": {"m": {"deployments": ["d", "free"]}},
    "deployments": {
        "d": {"provider": "simulated", "model": "gpt-4o-mini", "rpm": 20, "window_s": 1.0,
              "burst": 0.05},
        "free": {"provider": "simulated", "model": "gpt-4o-mini"},
    },
})
ONE = (1.0, 0.0, 0.0, 0.0)


async def test_interactive_goes_first_and_only_budgeted_deployments_have_gates() -> None:
    gates = BudgetGates(CONFIG.deployments, MemoryBudgetStore())
    assert list(gates.gates) == ["d"]
    assert await gates.acquire("free", ONE, Lane.INTERACTIVE) is None
    order: list[str] = []

    async def ask(lane: Lane, tag: str) -> None:
        reservation = await gates.acquire("d", ONE, lane)
        assert reservation is not None
        order.append(tag)

    tasks = [asyncio.create_task(ask(Lane.BATCH, f"b{i}")) for i in range(3)]
    await asyncio.sleep(0)
    assert gates.waiting(Lane.BATCH) == 3
    tasks += [asyncio.create_task(ask(Lane.INTERACTIVE, f"i{i}")) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order[:3] == ["i0", "i1", "i2"]
    assert sorted(order[3:]) == ["b0", "b1", "b2"]
    gates.close()


async def test_a_caller_that_gives_up_leaves_the_queue_and_the_budget() -> None:
    store = MemoryBudgetStore()
    gates = BudgetGates(CONFIG.deployments, store)
    try:
        async with asyncio.timeout(0.01):
            await gates.acquire("d", ONE, Lane.INTERACTIVE)
    except TimeoutError:
        pass
    await asyncio.sleep(0.2)
    assert gates.waiting(Lane.INTERACTIVE) == 0
    assert store.states["d"].leases == []  # a grant that came too late was given back
    gates.close()


async def test_an_unreachable_store_sends_nothing() -> None:
    class Down(MemoryBudgetStore):
        async def reserve(self, *args: object, **kwargs: object) -> NoReturn:
            raise ConnectionError("down")

    gates = BudgetGates(CONFIG.deployments, Down())
    waiter = asyncio.create_task(gates.acquire("d", ONE, Lane.INTERACTIVE))
    await asyncio.sleep(0.7)
    assert not waiter.done() and gates.gates["d"].store_failures >= 1
    gates.close()
    await asyncio.gather(waiter, return_exceptions=True)
