"""Which messages need a look at the results of record before a provider is called."""

from __future__ import annotations

from workers.inference.consumer import CLOCK_SKEW_S, may_be_redelivery

ASSIGNED = 1_800_000_000.0


def test_messages_from_before_the_assignment_are_suspects() -> None:
    assert may_be_redelivery(int((ASSIGNED - 60) * 1000), ASSIGNED)


def test_messages_within_the_clock_skew_margin_are_suspects() -> None:
    assert may_be_redelivery(int((ASSIGNED + CLOCK_SKEW_S - 1) * 1000), ASSIGNED)


def test_messages_produced_after_the_assignment_are_new() -> None:
    assert not may_be_redelivery(int((ASSIGNED + CLOCK_SKEW_S + 1) * 1000), ASSIGNED)


def test_unknown_assignment_time_is_treated_as_suspect() -> None:
    assert may_be_redelivery(int(ASSIGNED * 1000), None)
