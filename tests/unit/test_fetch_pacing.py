"""Fetch pacing: short waits while quiet, doubling up to a ceiling while polls are busy."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from aiokafka.errors import IllegalStateError

from broker.clock import FakeClock
from broker.kafka.fetch_pacing import STARVED_CEILING_MS, FetchPacing, is_starved


def _consumer(wait_ms: int) -> SimpleNamespace:
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=wait_ms))


def test_busy_polls_double_the_wait_up_to_the_ceiling() -> None:
    consumer = _consumer(5)
    pacing = FetchPacing(consumer, quiet_ms=5, busy_ms=20)
    waits = []
    for _ in range(4):
        pacing.observe(10)
        waits.append(consumer._fetcher._fetch_max_wait_ms)
    assert waits == [10, 20, 20, 20]


def test_a_quiet_poll_restores_the_short_wait() -> None:
    consumer = _consumer(5)
    pacing = FetchPacing(consumer, quiet_ms=5, busy_ms=20)
    pacing.observe(50)
    pacing.observe(50)
    pacing.observe(1)
    assert consumer._fetcher._fetch_max_wait_ms == 5 and pacing.wait_ms == 5


def test_a_middling_poll_keeps_the_current_wait() -> None:
    consumer = _consumer(5)
    pacing = FetchPacing(consumer, quiet_ms=5, busy_ms=40)
    pacing.observe(8)
    pacing.observe(2)
    assert consumer._fetcher._fetch_max_wait_ms == 10


def test_a_ceiling_below_the_quiet_wait_never_shortens_it() -> None:
    consumer = _consumer(250)
    pacing = FetchPacing(consumer, quiet_ms=250, busy_ms=20)
    pacing.observe(100)
    assert consumer._fetcher._fetch_max_wait_ms == 250


def test_a_consumer_without_the_attribute_is_left_alone() -> None:
    pacing = FetchPacing(SimpleNamespace(), quiet_ms=5, busy_ms=20)
    pacing.observe(100)  # must not raise
    assert pacing.wait_ms == 10


def test_after_a_while_with_nothing_to_read_the_wait_grows_to_idle() -> None:
    consumer, clock = _consumer(3), FakeClock(0.0)
    pacing = FetchPacing(consumer, quiet_ms=3, busy_ms=20, idle_ms=50, idle_after_s=2.0,
                         clock=clock)
    clock.now = 1.9
    pacing.observe(0)
    assert consumer._fetcher._fetch_max_wait_ms == 3
    clock.now = 2.0
    pacing.observe(0)
    assert consumer._fetcher._fetch_max_wait_ms == 50


def test_any_record_after_idle_brings_the_quiet_wait_back() -> None:
    for records in (1, 2, 3):
        consumer, clock = _consumer(3), FakeClock(0.0)
        pacing = FetchPacing(consumer, quiet_ms=3, busy_ms=20, idle_ms=50, clock=clock)
        clock.now = 5.0
        pacing.observe(0)
        assert pacing.wait_ms == 50
        pacing.observe(records)
        assert consumer._fetcher._fetch_max_wait_ms == 3, records
        clock.now = 6.0  # the idle clock restarted at the read
        pacing.observe(0)
        assert consumer._fetcher._fetch_max_wait_ms == 3, records


def test_a_busy_poll_after_idle_goes_to_the_busy_ceiling() -> None:
    consumer, clock = _consumer(3), FakeClock(0.0)
    pacing = FetchPacing(consumer, quiet_ms=3, busy_ms=20, idle_ms=50, clock=clock)
    clock.now = 5.0
    pacing.observe(0)
    pacing.observe(40)
    assert consumer._fetcher._fetch_max_wait_ms == 20


def test_one_starved_poll_is_not_enough_to_raise_the_floor() -> None:
    consumer = _consumer(3)
    pacing = FetchPacing(consumer, quiet_ms=3, busy_ms=20)
    pacing.observe(0, starved=True)
    pacing.observe(0)
    pacing.observe(0, starved=True)
    assert pacing.floor_ms == 0 and consumer._fetcher._fetch_max_wait_ms == 3


def test_starved_polls_in_a_row_double_the_floor_up_to_the_ceiling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = _consumer(3)
    pacing = FetchPacing(consumer, quiet_ms=3, busy_ms=20)
    floors = []
    with caplog.at_level(logging.WARNING, logger="broker.kafka.fetch_pacing"):
        for _ in range(16):
            pacing.observe(0, starved=True)
            floors.append(pacing.floor_ms)
    assert floors[:5] == [0, 6, 12, 24, 48]
    assert floors[-1] == STARVED_CEILING_MS
    assert consumer._fetcher._fetch_max_wait_ms == STARVED_CEILING_MS
    # One warning per raise (6 ... 768, then the ceiling), none while stuck at the ceiling;
    # each tells the user what to do about it.
    assert len(caplog.records) == len(set(floors)) - 1 == 9
    assert all("restart `sluice dev`" in record.getMessage() for record in caplog.records)


def test_the_floor_holds_under_quiet_busy_and_idle_polls() -> None:
    consumer, clock = _consumer(3), FakeClock(0.0)
    pacing = FetchPacing(consumer, quiet_ms=3, busy_ms=20, idle_ms=50, clock=clock)
    for _ in range(5):
        pacing.observe(0, starved=True)  # floor 6, 12, 24, 48
    assert pacing.floor_ms == 48
    waits = []
    for records in (1, 100, 100, 1):
        pacing.observe(records)
        waits.append(consumer._fetcher._fetch_max_wait_ms)
    clock.now = 10.0
    pacing.observe(0)  # idle: 50 is above the floor
    waits.append(consumer._fetcher._fetch_max_wait_ms)
    assert waits == [48, 48, 48, 48, 50]


class _Consumer:
    """The four calls `is_starved` makes, over fixed positions and high watermarks."""

    def __init__(self, positions: dict[str, int], highs: dict[str, int | None],
                 paused: frozenset[str] = frozenset(), revoked: frozenset[str] = frozenset()):
        self._positions, self._highs = positions, highs
        self._paused, self._revoked = paused, revoked

    def assignment(self) -> set[str]:
        return set(self._positions)

    def paused(self) -> frozenset[str]:
        return self._paused

    def highwater(self, tp: str) -> int | None:
        return self._highs[tp]

    async def position(self, tp: str) -> int:
        if tp in self._revoked:
            raise IllegalStateError(f"Partition {tp} is not assigned")
        return self._positions[tp]


async def test_starved_only_when_an_unpaused_partition_is_behind_the_broker() -> None:
    assert await is_starved(_Consumer({"a": 5, "b": 9}, {"a": 5, "b": 12}))
    assert not await is_starved(_Consumer({"a": 5, "b": 9}, {"a": 5, "b": 9}))
    assert not await is_starved(_Consumer({"a": 5}, {"a": None}))
    assert not await is_starved(
        _Consumer({"a": 5}, {"a": 12}, paused=frozenset({"a"})))


async def test_a_partition_revoked_while_looking_is_not_starvation() -> None:
    assert not await is_starved(
        _Consumer({"a": 5}, {"a": 12}, revoked=frozenset({"a"})))


async def test_a_poll_counts_its_records_and_empty_polls_ask_about_starvation() -> None:
    behind = _Consumer({"a": 5}, {"a": 12})
    pacing = FetchPacing(behind, quiet_ms=3, busy_ms=20)
    await pacing.observe_poll({"a": [object()] * 4})  # busy: 3 -> 6, nothing asked
    assert pacing.wait_ms == 6 and pacing.floor_ms == 0
    await pacing.observe_poll({})  # quiet again: 3
    await pacing.observe_poll({})  # the second starved poll in a row: floor 3 x 2
    assert pacing.floor_ms == 6 and pacing.wait_ms == 6
