"""The map that bridges 202 -> ledger record forgets by age, so memory stays flat."""

from __future__ import annotations

from broker.clock import FakeClock
from ingress.services import RecentlyAccepted


def test_entries_expire_and_are_dropped_as_new_ones_arrive() -> None:
    clock = FakeClock(0.0)
    accepted = RecentlyAccepted(ttl_s=30, clock=clock)
    accepted.remember("old", "acme", "m")
    clock.now = 10
    assert accepted.lookup("old") == ("acme", "m")
    clock.now = 31
    assert accepted.lookup("old") is None
    for index in range(1000):
        accepted.remember(f"r{index}", "acme", "m")
    assert len(accepted._entries) == 1000  # "old" was evicted, not kept until overflow


def test_size_is_bounded_even_within_the_ttl() -> None:
    accepted = RecentlyAccepted(max_entries=100, ttl_s=30, clock=FakeClock(0.0))
    for index in range(500):
        accepted.remember(f"r{index}", "acme", "m")
    assert len(accepted._entries) == 100
    assert accepted.lookup("r499") == ("acme", "m")
    assert accepted.lookup("r0") is None
