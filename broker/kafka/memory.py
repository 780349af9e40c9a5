"""An in-memory Kafka for unit tests: topics, partitions, consumer groups, committed offsets.

Chosen by a bootstrap address `memory://<name>` (every `KafkaSettings` naming the same
name shares one broker in this process), so components built on `broker.kafka` run on it
unchanged: `new_producer`, `new_consumer`, `ensure_topics`, `partition_ids`... return or
act on these classes. It keeps the semantics our code relies on, and the contract tests
(`tests/integration/test_kafka_port.py`) check them against Apache Kafka and Tansu too:

- records get consecutive offsets per partition; a key picks a stable partition;
- a consumer group spreads the partitions of its subscription over its members and
  rebalances when one joins or leaves, telling each member's listener (revoked, then
  assigned) at its next poll, as Kafka's protocol does;
- a member starts from its group's committed offset, else from `auto_offset_reset`;
- a record over `max_request_size` is refused with `MessageSizeTooLargeError`.

Not modelled: replication, transactions, retention (topic configs are ignored),
time-based rebalance timeouts.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import (
    IllegalStateError,
    MessageSizeTooLargeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import OffsetAndTimestamp

PREFIX = "memory://"
_AUTO_CREATED_PARTITIONS = 1  # Kafka's own `num.partitions` default
_member_ids = count(1)


@dataclass
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class MemoryBroker:
    """One in-process "cluster": its topics and consumer groups."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.topics: dict[str, list[list[ConsumerRecord[bytes, bytes]]]] = {}
        self.groups: dict[str, _Group] = {}
        self._waiters: set[asyncio.Event] = set()

    # Topics

    def create_topic(self, name: str, partitions: int) -> bool:
        """Create `name` unless it exists; whether it was created."""
        if name in self.topics:
            return False
        self.topics[name] = [[] for _ in range(partitions)]
        self._rebalance_all()  # pattern subscriptions may now match it
        return True

    def delete_topic(self, name: str) -> None:
        """Forget a topic and its records."""
        if self.topics.pop(name, None) is not None:
            self._rebalance_all()

    def partitions(self, topic: str) -> list[list[ConsumerRecord[bytes, bytes]]]:
        """A topic's partitions; unknown topics raise `UnknownTopicOrPartitionError`."""
        try:
            return self.topics[topic]
        except KeyError:
            raise UnknownTopicOrPartitionError(topic) from None

    def append(self, topic: str, partition: int | None, key: bytes | None, value: bytes | None,
               headers: Sequence[tuple[str, bytes]], timestamp_ms: int | None = None
               ) -> ConsumerRecord[bytes, bytes]:
        """Write one record (the topic is created on first use, as Kafka does by default).

        Its timestamp is `timestamp_ms` when given, else now (Kafka's CreateTime).
        """
        self.create_topic(topic, _AUTO_CREATED_PARTITIONS)
        partitions = self.topics[topic]
        if partition is None:
            partition = (zlib.crc32(key) if key is not None
                         else sum(map(len, partitions))) % len(partitions)
        if not 0 <= partition < len(partitions):
            raise UnknownTopicOrPartitionError(f"{topic}[{partition}]")
        log = partitions[partition]
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            topic=topic, partition=partition, offset=len(log),
            timestamp=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            timestamp_type=0, key=key, value=value,
            checksum=None, serialized_key_size=len(key) if key is not None else -1,
            serialized_value_size=len(value) if value is not None else -1,
            headers=tuple(headers))
        log.append(record)
        for waiter in self._waiters:
            waiter.set()
        return record

    def end(self, tp: TopicPartition) -> int:
        """The offset the next record of `tp` will get."""
        return len(self.partitions(tp.topic)[tp.partition])

    async def wait_for_records(self, timeout_s: float) -> None:
        """Return when a record is appended anywhere, or after `timeout_s`."""
        if timeout_s <= 0:
            return
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    # Groups

    def join(self, group_id: str, member: MemoryConsumer) -> _Group:
        group = self.groups.setdefault(group_id, _Group())
        if member not in group.members:
            group.members.append(member)
        self._rebalance(group)
        return group

    def leave(self, group_id: str, member: MemoryConsumer) -> None:
        group = self.groups.get(group_id)
        if group is not None and member in group.members:
            group.members.remove(member)
            self._rebalance(group)

    def _rebalance_all(self) -> None:
        for group in self.groups.values():
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        """Spread the subscribed partitions over the members, round robin by member id."""
        members = sorted(group.members, key=lambda m: m.member_id)
        shares: dict[MemoryConsumer, set[TopicPartition]] = {m: set() for m in members}
        wanted = sorted({tp for m in members for tp in m.subscribed_partitions()})
        for index, tp in enumerate(wanted):
            interested = [m for m in members if tp in m.subscribed_partitions()]
            if interested:
                shares[interested[index % len(interested)]].add(tp)
        for member, share in shares.items():
            if share != member.assignment() or not member.joined:
                member.pending_assignment = share


_brokers: dict[str, MemoryBroker] = {}


def memory_broker(bootstrap: str) -> MemoryBroker:
    """The broker a `memory://<name>` bootstrap address names (made on first use)."""
    name = bootstrap.removeprefix(PREFIX)
    return _brokers.setdefault(name, MemoryBroker(name))


def is_memory(bootstrap: str) -> bool:
    """Whether a bootstrap address names an in-memory broker."""
    return bootstrap.startswith(PREFIX)


class MemoryProducer:
    """The subset of `AIOKafkaProducer` sluicegate uses, writing to a `MemoryBroker`."""

    def __init__(self, bootstrap_servers: str, *, max_request_size: int = 1_048_576,
                 **_options: Any) -> None:
        self._broker = memory_broker(bootstrap_servers)
        self._max_request_size = max_request_size

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to flush: every send is written at once."""

    async def partitions_for(self, topic: str) -> set[int]:
        """The topic's partition ids (the topic is created if it does not exist)."""
        self._broker.create_topic(topic, _AUTO_CREATED_PARTITIONS)
        return set(range(len(self._broker.topics[topic])))

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Sequence[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        """Write a record now; the returned future is already acknowledged."""
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers or ()))
        if size > self._max_request_size:
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the "
                "maximum request size")
        record = self._broker.append(topic, partition, key, value, headers or (), timestamp_ms)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(record)
        return future

    async def send_and_wait(self, topic: str, value: bytes | None = None,
                            key: bytes | None = None, partition: int | None = None,
                            timestamp_ms: int | None = None,
                            headers: Sequence[tuple[str, bytes]] | None = None) -> Any:
        """Write a record and return its metadata (the record itself here)."""
        return await (await self.send(topic, value, key, partition, timestamp_ms, headers))


class MemoryConsumer:
    """The subset of `AIOKafkaConsumer` sluicegate uses, reading a `MemoryBroker`."""

    def __init__(self, bootstrap_servers: str, *, group_id: str | None = None,
                 auto_offset_reset: str = "latest", max_poll_records: int | None = None,
                 **_options: Any) -> None:
        self._broker = memory_broker(bootstrap_servers)
        self.group_id = group_id
        self.member_id = next(_member_ids)
        self._reset = auto_offset_reset
        self._max_poll_records = max_poll_records
        self._topics: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._listener: Any = None
        self._assigned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._group: _Group | None = None
        self._started = False
        self.joined = False
        self.pending_assignment: set[TopicPartition] | None = None

    # Lifecycle and subscription

    async def start(self) -> None:
        """Join the group if subscribed (without a group, every subscribed partition)."""
        self._started = True
        if self.group_id is not None and (self._topics or self._pattern):
            self._group = self._broker.join(self.group_id, self)
        elif self._topics or self._pattern:
            self._assigned = self.subscribed_partitions()

    async def stop(self) -> None:
        """Leave the group; our partitions go to the other members."""
        if self._group is not None and self.group_id is not None:
            self._broker.leave(self.group_id, self)
            self._group = None
        self._started = False

    def subscribe(self, topics: Iterable[str] = (), pattern: str | None = None,
                  listener: Any = None) -> None:
        """Subscribe to topics or a regex; partitions come from the group at the next poll."""
        self._topics = set(topics)
        self._pattern = re.compile(pattern) if pattern is not None else None
        self._listener = listener
        if self._started and self.group_id is not None:
            self._group = self._broker.join(self.group_id, self)

    def subscribed_partitions(self) -> set[TopicPartition]:
        """Every partition of the topics this member's subscription matches now."""
        names = [name for name in self._broker.topics
                 if name in self._topics or (self._pattern and self._pattern.match(name))]
        return {TopicPartition(name, p) for name in names
                for p in range(len(self._broker.topics[name]))}

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read these partitions, outside any group."""
        self._assigned = set(partitions)
        self._positions = {tp: pos for tp, pos in self._positions.items()
                           if tp in self._assigned}

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer reads now."""
        return set(self._assigned)

    async def topics(self) -> set[str]:
        """Every topic of the broker."""
        return set(self._broker.topics)

    # Positions

    def _position(self, tp: TopicPartition) -> int:
        if tp not in self._assigned:
            raise IllegalStateError(f"{tp} is not assigned")
        if tp not in self._positions:
            committed = self._group.committed.get(tp) if self._group is not None else None
            if committed is not None:
                self._positions[tp] = committed
            else:
                self._positions[tp] = 0 if self._reset == "earliest" else self._broker.end(tp)
        return self._positions[tp]

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record this consumer will read from `tp`."""
        return self._position(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read `tp` from `offset` next."""
        self._positions[tp] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Read these partitions from their first record."""
        for tp in partitions or self._assigned:
            self._positions[tp] = 0

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Read only records written from now on."""
        for tp in partitions or self._assigned:
            self._positions[tp] = self._broker.end(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset (always known here)."""
        return self._broker.end(tp)

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Each partition's end offset."""
        return {tp: self._broker.end(tp) for tp in partitions}

    async def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """The first record at or after each time, or None."""
        found: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        for tp, moment in timestamps.items():
            log = self._broker.partitions(tp.topic)[tp.partition]
            first = next((r for r in log if r.timestamp >= moment), None)
            found[tp] = None if first is None else OffsetAndTimestamp(
                first.offset, first.timestamp)
        return found

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of `tp`."""
        group = self._broker.groups.get(self.group_id or "")
        return group.committed.get(tp) if group is not None else None

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit `offsets` (or every current position) for the group."""
        if self.group_id is None:
            raise IllegalStateError("commit needs a group_id")
        group = self._broker.groups.setdefault(self.group_id, _Group())
        if offsets is None:
            offsets = {tp: self._position(tp) for tp in self._assigned}
        group.committed.update(offsets)

    # Flow control

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching these partitions (the consumer stays in its group)."""
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        """Fetch these partitions again."""
        self._paused.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        """The paused partitions."""
        return set(self._paused)

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None
                      ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Records past our positions, waiting up to `timeout_ms` for the first."""
        deadline = time.monotonic() + timeout_ms / 1000
        limit = max_records or self._max_poll_records or 500
        while True:
            await self._apply_rebalance()
            batch = self._take(partitions, limit)
            remaining = deadline - time.monotonic()
            if batch or remaining <= 0:
                return batch
            await self._broker.wait_for_records(min(remaining, 0.05))

    def _take(self, partitions: Sequence[TopicPartition], limit: int
              ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        wanted = partitions or sorted(self._assigned - self._paused)
        for tp in wanted:
            if tp not in self._assigned or tp.topic not in self._broker.topics:
                continue
            position = self._position(tp)
            records = self._broker.topics[tp.topic][tp.partition][position:position + limit]
            if records:
                batch[tp] = list(records)
                self._positions[tp] = position + len(records)
                limit -= len(records)
            if limit <= 0:
                break
        return batch

    async def _apply_rebalance(self) -> None:
        if self.group_id is None and (self._topics or self._pattern):
            # aiokafka without a group reads every partition of what it subscribed to,
            # following topics (and partitions) as they appear.
            self._assigned = self.subscribed_partitions()
            return
        if self.pending_assignment is None:
            return
        new, self.pending_assignment = self.pending_assignment, None
        if self._listener is not None and self.joined:
            await _maybe_await(self._listener.on_partitions_revoked(set(self._assigned)))
        self._assigned = set(new)
        self._positions.clear()  # positions come from the group's commits
        self._paused &= self._assigned
        self.joined = True
        if self._listener is not None:
            await _maybe_await(self._listener.on_partitions_assigned(set(new)))


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value
