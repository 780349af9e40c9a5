"""Commit positions that never pass an unfinished message.

Work is processed concurrently and finishes out of order. Kafka stores one position per
partition, so the only safe position is the lowest offset still in flight (or one past the
highest finished offset when nothing is in flight). FastStream's `ack()` would commit the
consumed position of every partition instead (see DESIGN.md), skipping unfinished work
when a worker crashes.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass(slots=True)
class _PartitionOffsets:
    in_flight: list[int] = field(default_factory=list)  # min-heap
    finished: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the highest offset started
    committed: int | None = None


class OffsetTracker:
    """Tracks started and finished offsets per partition; yields safe commit positions."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _PartitionOffsets] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        """Record that `offset` was handed to a processor."""
        state = self._partitions.setdefault(tp, _PartitionOffsets())
        heapq.heappush(state.in_flight, offset)
        if state.next_offset is None or offset >= state.next_offset:
            state.next_offset = offset + 1

    def finished(self, tp: TopicPartition, offset: int) -> None:
        """Record that `offset`'s effects are durable (results and usage acknowledged)."""
        state = self._partitions.get(tp)
        if state is None:
            return  # partition was revoked meanwhile; its new owner redoes the work
        state.finished.add(offset)
        while state.in_flight and state.in_flight[0] in state.finished:
            state.finished.discard(heapq.heappop(state.in_flight))

    def in_flight(self, tp: TopicPartition | None = None) -> int:
        """How many started offsets have not finished (in one partition, or in all)."""
        if tp is not None:
            state = self._partitions.get(tp)
            return len(state.in_flight) if state else 0
        return sum(len(state.in_flight) for state in self._partitions.values())

    def safe_position(self, tp: TopicPartition) -> int | None:
        """The position to commit for `tp`: nothing before it is unfinished."""
        state = self._partitions.get(tp)
        if state is None or state.next_offset is None:
            return None
        return state.in_flight[0] if state.in_flight else state.next_offset

    def pending_commits(self) -> dict[TopicPartition, int]:
        """Positions that moved since they were last marked committed."""
        moves: dict[TopicPartition, int] = {}
        for tp, state in self._partitions.items():
            position = self.safe_position(tp)
            if position is not None and position != state.committed:
                moves[tp] = position
        return moves

    def mark_committed(self, positions: dict[TopicPartition, int]) -> None:
        """Remember what the broker acknowledged as committed."""
        for tp, position in positions.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.committed = position

    def forget(self, partitions: set[TopicPartition] | frozenset[TopicPartition]) -> None:
        """Drop revoked partitions; their unfinished work will be redone by the new owner."""
        for tp in partitions:
            self._partitions.pop(tp, None)
