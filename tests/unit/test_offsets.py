"""The commit position never passes an unfinished message."""

from __future__ import annotations

from aiokafka import TopicPartition

from broker.kafka.offsets import OffsetTracker

TP = TopicPartition("t", 0)
OTHER = TopicPartition("t", 1)


def test_position_waits_for_the_oldest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.started(TP, offset)
    tracker.finished(TP, 12)
    tracker.finished(TP, 11)
    assert tracker.safe_position(TP) == 10
    tracker.finished(TP, 10)
    assert tracker.safe_position(TP) == 13
    assert tracker.in_flight() == 0


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    tracker.started(TP, 0)
    tracker.started(OTHER, 5)
    tracker.finished(OTHER, 5)
    assert tracker.pending_commits() == {TP: 0, OTHER: 6}


def test_pending_commits_only_reports_moves() -> None:
    tracker = OffsetTracker()
    tracker.started(TP, 0)
    tracker.finished(TP, 0)
    assert tracker.pending_commits() == {TP: 1}
    tracker.mark_committed({TP: 1})
    assert tracker.pending_commits() == {}
    tracker.started(TP, 1)
    assert tracker.pending_commits() == {}  # still 1: offset 1 is unfinished
    tracker.finished(TP, 1)
    assert tracker.pending_commits() == {TP: 2}


def test_revoked_partitions_are_forgotten_and_late_finishes_ignored() -> None:
    tracker = OffsetTracker()
    tracker.started(TP, 3)
    tracker.forget({TP})
    tracker.finished(TP, 3)
    assert tracker.safe_position(TP) is None
    assert tracker.pending_commits() == {}


def test_many_out_of_order_completions() -> None:
    tracker = OffsetTracker()
    offsets = list(range(1000))
    for offset in offsets:
        tracker.started(TP, offset)
    for offset in reversed(offsets[1:]):
        tracker.finished(TP, offset)
    assert tracker.safe_position(TP) == 0
    tracker.finished(TP, 0)
    assert tracker.safe_position(TP) == 1000
