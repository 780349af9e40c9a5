"""Budget arithmetic with a fake clock: no sliding window is ever overspent."""

from __future__ import annotations

import asyncio

import pytest

from broker.budgets import Backoff, BucketShape, MemoryBudgetStore
from broker.budgets.algorithm import Vector
from broker.clock import FakeClock

L, W = 60.0, 10.0
SHAPE = BucketShape(limits=(L, 0, 0, 0), window_s=W, burst=0.05, guard_s=0.0)
ONE: Vector = (1.0, 0.0, 0.0, 0.0)


async def _greedy(store: MemoryBudgetStore, clock: FakeClock, seconds: float,
                  step: float = 0.01) -> list[float]:
    """Reserve whenever allowed for `seconds`; the times of the grants."""
    granted = []
    end = clock.now + seconds
    while clock.now < end:
        while (await store.reserve("d", SHAPE, ONE)).granted:
            granted.append(clock.now)
        clock.now += step
    return granted


async def _fill(store: MemoryBudgetStore, clock: FakeClock, shape: BucketShape = SHAPE) -> None:
    """Create the (empty) bucket, then wait until it is full."""
    grant = await store.reserve("d", shape, (0, 0, 0, 0))
    await store.settle("d", shape, (0, 0, 0, 0), (0, 0, 0, 0), grant.lease)
    clock.now += 2 * W


def _max_in_any_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_no_window_sees_more_than_the_limit_and_steady_state_uses_it() -> None:
    clock = FakeClock()
    store = MemoryBudgetStore(clock)
    granted = await _greedy(store, clock, 5 * W)
    assert _max_in_any_window(granted, W) <= L
    # A naive bucket (capacity L, refill L/W) would allow 2L here; ours sends ~(1 - b)L.
    per_window = len(granted) / 5
    assert per_window >= 0.93 * L


async def test_a_bucket_starts_empty_and_a_full_one_holds_only_the_burst() -> None:
    clock = FakeClock()
    store = MemoryBudgetStore(clock)
    first = await store.reserve("d", SHAPE, ONE)
    assert not first.granted and first.wait_s == pytest.approx(1 / (0.95 * L / W))
    clock.now += 10 * W  # idle for a long time: still only the burst at once
    burst = 0
    while (await store.reserve("d", SHAPE, ONE)).granted:
        burst += 1
    assert burst == 3  # b·L = 3


async def test_settle_refunds_unused_tokens_and_charges_overuse() -> None:
    clock = FakeClock()
    store = MemoryBudgetStore(clock)
    shape = BucketShape(limits=(0, 1000, 0, 0), window_s=W, burst=0.5, guard_s=0.0)
    await _fill(store, clock, shape)  # 500 tokens
    grant = await store.reserve("d", shape, (1, 400, 0, 0))
    assert grant.granted and grant.remaining[1] == pytest.approx(100)
    await store.settle("d", shape, (1, 400, 0, 0), (1, 100, 0, 0), grant.lease)
    assert store.states["d"].levels[1] == pytest.approx(400)
    grant = await store.reserve("d", shape, (1, 100, 0, 0))
    await store.settle("d", shape, (1, 100, 0, 0), (1, 350, 0, 0), grant.lease)
    assert store.states["d"].levels[1] == pytest.approx(50)
    assert store.states["d"].leases == []


async def test_a_failed_call_releases_everything() -> None:
    clock = FakeClock()
    store = MemoryBudgetStore(clock)
    await _fill(store, clock)
    grant = await store.reserve("d", SHAPE, ONE)
    assert grant.granted
    before = grant.remaining[0]
    await store.settle("d", SHAPE, ONE, (0, 0, 0, 0), grant.lease)
    assert store.states["d"].levels[0] == pytest.approx(before + 1)


async def test_concurrency_is_a_lease_that_expires() -> None:
    clock = FakeClock()
    store = MemoryBudgetStore(clock)
    shape = BucketShape(limits=(0, 0, 0, 0), window_s=W, max_concurrency=2, lease_s=30)
    a = await store.reserve("d", shape, ONE)
    b = await store.reserve("d", shape, ONE)
    assert a.granted and b.granted
    assert not (await store.reserve("d", shape, ONE)).granted
    await store.settle("d", shape, ONE, ONE, a.lease)
    assert (await store.reserve("d", shape, ONE)).granted
    clock.now += 31  # a worker died holding leases: they end by themselves
    assert (await store.reserve("d", shape, ONE)).granted


async def test_a_429_blocks_until_the_reset_and_aimd_shrinks_then_recovers() -> None:
    clock = FakeClock()
    store = MemoryBudgetStore(clock)
    await _fill(store, clock)
    assert (await store.reserve("d", SHAPE, ONE)).granted
    clock.now += 2
    await store.rate_limited("d", SHAPE, Backoff(block_s=3, decrease=0.5))
    await store.rate_limited("d", SHAPE, Backoff(block_s=3, decrease=0.5))  # same burst
    denied = await store.reserve("d", SHAPE, ONE)
    assert not denied.granted and denied.wait_s >= 3
    snapshot = await store.snapshot("d", SHAPE)
    assert snapshot["scale"] == pytest.approx(0.5)
    assert snapshot["requests"]["limit"] == pytest.approx(L / 2)
    clock.now += 5 * W  # +0.05 per window
    assert (await store.snapshot("d", SHAPE))["scale"] == pytest.approx(0.75)


async def test_learned_limits_cap_a_configured_budget_that_is_too_high() -> None:
    clock = FakeClock()
    store = MemoryBudgetStore(clock)
    await store.learn("d", (L / 2, 0, 0, 0))
    granted = await _greedy(store, clock, 4 * W)
    assert _max_in_any_window(granted, W) <= L / 2


async def test_batch_margin_lets_interactive_go_first() -> None:
    clock = FakeClock()
    store = MemoryBudgetStore(clock)
    shape = BucketShape(limits=(L, 0, 0, 0), window_s=W, burst=0.1, guard_s=0.0)
    await _fill(store, clock, shape)  # 6 requests
    for _ in range(5):
        assert (await store.reserve("d", shape, ONE)).granted
    assert not (await store.reserve("d", shape, ONE, margin=0.5)).granted
    assert (await store.reserve("d", shape, ONE)).granted


def test_fake_clock_is_deterministic() -> None:
    assert asyncio.run(_greedy(MemoryBudgetStore(FakeClock()), FakeClock(), 0.0)) == []
