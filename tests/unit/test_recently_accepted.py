"""The map that bridges 202 -> ledger record forgets by age, so memory stays flat."""

from __future__ import annotations

from ingress.services import RecentlyAccepted


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_and_are_dropped_as_new_ones_arrive() -> None:
    clock = _Clock()
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
    accepted = RecentlyAccepted(max_entries=100, ttl_s=30, clock=_Clock())
    for index in range(500):
        accepted.remember(f"r{index}", "acme", "m")
    assert len(accepted._entries) == 100
    assert accepted.lookup("r499") == ("acme", "m")
    assert accepted.lookup("r0") is None
