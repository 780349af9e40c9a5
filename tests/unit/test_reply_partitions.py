"""Replies to an ingress reply topic share one partition per time slot; others go by key."""

from __future__ import annotations

import asyncio

from broker.clock import FakeClock
from workers.inference.reply_partitions import StickyReplyPartitions


async def _four_partitions(topic: str) -> set[int]:
    return {0, 1, 2, 3}


def _picker(clock: FakeClock) -> StickyReplyPartitions:
    return StickyReplyPartitions(_four_partitions, "sluice.replies.", slot_s=0.5, clock=clock)


def test_replies_within_one_slot_share_a_partition() -> None:
    clock = FakeClock(100.0)
    picker = _picker(clock)

    async def three_picks() -> list[int | None]:
        picks = []
        for _ in range(3):
            picks.append(await picker.pick("sluice.replies.i1"))
            clock.advance(0.1)
        return picks

    picks = asyncio.run(three_picks())
    assert picks[0] is not None
    assert picks == [picks[0]] * 3


def test_slots_rotate_over_every_partition() -> None:
    clock = FakeClock(100.0)
    picker = _picker(clock)

    async def one_per_slot(slots: int) -> list[int | None]:
        picks = []
        for _ in range(slots):
            picks.append(await picker.pick("sluice.replies.i1"))
            clock.advance(0.5)
        return picks

    picks = asyncio.run(one_per_slot(8))
    assert sorted(p for p in picks if p is not None) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_reply_topic_the_caller_named_keeps_keyed_partitioning() -> None:
    picker = _picker(FakeClock(100.0))
    assert asyncio.run(picker.pick("team-a.answers")) is None
