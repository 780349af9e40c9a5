"""Deficit round-robin: tenants alternate by tokens, whatever their backlogs."""

from __future__ import annotations

import asyncio
import uuid

from broker.budgets import MemoryBudgetStore
from broker.config import parse_config
from broker.settings import KafkaSettings, WorkerSettings
from schemas import Lane
from workers.inference import InferencePool
from workers.inference.fair_queue import FairQueue
from workers.inference.lanes import BudgetGates
from workers.inference.results import NoResultsOfRecord
from workers.inference.tenant_weights import TenantWeights

CONFIG = parse_config({
    "models": {"m": {"deployments": ["d"]}},
    "deployments": {"d": {"provider": "simulated", "model": "gpt-4o-mini"}},
})


def _queue() -> FairQueue[tuple[str, float]]:
    return FairQueue(lambda item: item[1], lambda item: item[0].startswith("gone"))


def _serve(queue: FairQueue[tuple[str, float]], count: int) -> list[str]:
    served = []
    for _ in range(count):
        head = queue.head()
        assert head is not None
        served.append(queue.pop(head[0])[0])
    return served


def test_a_single_request_goes_before_a_backlog_queued_earlier() -> None:
    queue = _queue()
    for index in range(1000):
        queue.push("a", (f"a{index}", 100.0))
    queue.push("b", ("b0", 100.0))
    assert "b0" in _serve(queue, 2)


def test_tenants_share_by_tokens_not_by_requests() -> None:
    queue = _queue()
    for index in range(200):
        queue.push("small", (f"s{index}", 10.0))
        queue.push("large", (f"l{index}", 100.0))
    served = _serve(queue, 110)
    small = sum(1 for tag in served if tag.startswith("s"))
    large = len(served) - small
    # Equal tokens: ten small requests for each large one.
    assert abs(small * 10 - large * 100) <= 200


def test_each_tenant_keeps_its_order_and_abandoned_items_are_skipped() -> None:
    queue = _queue()
    queue.push("a", ("a0", 50.0))
    queue.push("a", ("gone", 50.0))
    queue.push("a", ("a1", 50.0))
    assert len(queue) == 2
    assert _serve(queue, 2) == ["a0", "a1"]
    assert queue.head() is None


def test_an_idle_tenant_does_not_bank_turns() -> None:
    queue = _queue()
    queue.push("a", ("a0", 100.0))
    assert _serve(queue, 1) == ["a0"]
    for index in range(5):
        queue.push("b", (f"b{index}", 100.0))
    _serve(queue, 2)
    for index in range(5):
        queue.push("a", (f"a{index + 1}", 100.0))
    # A starts over at the back: it alternates with B from now on, no catching up.
    assert _serve(queue, 4) in (["b2", "a1", "b3", "a2"], ["a1", "b2", "a2", "b3"])


async def test_a_gate_grants_a_newcomer_within_its_first_turns() -> None:
    config = parse_config({
        "models": {"m": {"deployments": ["d"]}},
        "deployments": {"d": {"provider": "simulated", "model": "gpt-4o-mini",
                              "rpm": 10, "window_s": 1.0, "burst": 0.1}},
    })
    gates = BudgetGates(config.deployments, MemoryBudgetStore())
    order: list[str] = []

    async def ask(tenant: str, tag: str) -> None:
        await gates.acquire("d", (1.0, 100.0, 80.0, 20.0), Lane.INTERACTIVE, tenant)
        order.append(tag)

    flood = [asyncio.create_task(ask("a", f"a{i}")) for i in range(40)]
    await asyncio.sleep(0.05)
    late = asyncio.create_task(ask("b", "b"))
    await asyncio.wait_for(late, 5)
    # 10 grants a second: B arrived behind 40 of A's and went within A's next two turns.
    assert order.index("b") <= 3, order
    gates.close()
    await asyncio.gather(*flood, return_exceptions=True)


def test_a_tenant_of_weight_two_gets_twice_the_tokens() -> None:
    queue: FairQueue[tuple[str, float]] = FairQueue(
        lambda item: item[1], lambda item: False, lambda tenant: 2.0 if tenant == "gold" else 1.0)
    for index in range(300):
        queue.push("gold", (f"g{index}", 100.0))
        queue.push("plain", (f"p{index}", 100.0))
    served = _serve(queue, 300)
    gold = sum(1 for tag in served if tag.startswith("g"))
    assert abs(gold - 2 * (300 - gold)) <= 3


async def test_a_weighted_tenant_holds_more_of_a_workers_slots() -> None:
    async def load() -> dict[str, float]:
        return {"gold": 2.0}

    weights = TenantWeights(load)
    await weights.refresh()
    pool = InferencePool(
        KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}"),
        WorkerSettings(worker_concurrency=10, tenant_slot_share=0.3), CONFIG, ["m"], {},
        NoResultsOfRecord(), tenant_weights=weights)
    pool.tenant_used.update({"gold": 5, "plain": 3})
    assert not pool.over_fair_share("gold")  # 0.3 x 10 x 2 = 6 slots
    assert pool.over_fair_share("plain")  # 3 slots
    pool.tenant_used["gold"] = 6
    assert pool.over_fair_share("gold")
