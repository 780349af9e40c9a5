"""How far the ledger has read the results topic: end offsets against its committed offsets.

A worker that takes a partition over (its previous owner crashed) asks this before calling
a provider for the dead worker's unfinished requests: an answer the dead worker already
published lies below the results topic's end offsets, and the ledger commits its offsets
only after its PostgreSQL transaction (`broker.kafka.ApplyLoop`), so once its committed
offsets reach those ends every such answer is in the results of record.

Read like `broker.kafka.lag`: end offsets with a group-less consumer, the group's committed
offsets with a consumer that carries the group id and never subscribes (it never joins, so
it never disturbs the ledger). `MemoryLedgerOffsets` is the fake for unit tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from broker.kafka.clients import _admin, new_consumer, partition_ids, topics_for
from broker.kafka.memory import is_memory, memory_broker
from broker.settings import KafkaSettings


def ledger_group(topic_prefix: str) -> str:
    """The ledger's consumer group: one per topic prefix."""
    return f"{topic_prefix}ledger"


class LedgerOffsets(Protocol):
    """The three questions a catch-up asks, by partition number of the results topic."""

    async def result_ends(self) -> dict[int, int]:
        """Each results partition's end offset (the offset its next record will get)."""
        ...

    async def committed(self, partitions: Collection[int]) -> dict[int, int]:
        """The ledger group's committed offset of each of `partitions` it ever committed."""
        ...

    async def ledger_has_members(self) -> bool:
        """Whether a ledger consumer is in the group now."""
        ...

    async def close(self) -> None:
        """Release the clients opened for one catch-up."""
        ...


class KafkaLedgerOffsets:
    """Reads the ledger's progress from Kafka (or the in-memory broker); clients are opened
    at the first question and kept until `close`, so polling costs one OffsetFetch."""

    def __init__(self, settings: KafkaSettings):
        self._settings = settings
        self._topic = topics_for(settings).results
        self._group = ledger_group(settings.topic_prefix)
        self._reader: Any = None  # group-less: end offsets
        self._member: Any = None  # the ledger's group id, never subscribed: committed offsets

    async def result_ends(self) -> dict[int, int]:
        """One ListOffsets request for every partition of the results topic."""
        partitions = [TopicPartition(self._topic, p) for p in
                      await partition_ids(self._settings, self._topic, missing_ok=True)]
        if not partitions:
            return {}
        if self._reader is None:
            self._reader = await self._started(None)
        self._reader.assign(partitions)
        ends: Mapping[TopicPartition, int] = await self._reader.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}

    async def committed(self, partitions: Collection[int]) -> dict[int, int]:
        """The group's committed offsets, as its own members would read them."""
        if self._member is None:
            self._member = await self._started(self._group)
        found: dict[int, int] = {}
        for partition in partitions:
            offset = await self._member.committed(TopicPartition(self._topic, partition))
            if offset is not None and offset >= 0:
                found[partition] = offset
        return found

    async def ledger_has_members(self) -> bool:
        """Asked of the group coordinator (DescribeGroups)."""
        if is_memory(self._settings.kafka_bootstrap):
            group = memory_broker(self._settings.kafka_bootstrap).groups.get(self._group)
            return group is not None and bool(group.members)
        admin = await _admin(self._settings)
        try:
            responses = await admin.describe_consumer_groups([self._group])
        finally:
            await admin.close()
        return any(group["group"] == self._group and group["members"]
                   for response in responses for group in response.to_object()["groups"])

    async def close(self) -> None:
        """Stop the consumers; the next catch-up opens new ones."""
        for client in (self._reader, self._member):
            if client is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await client.stop()
        self._reader = self._member = None

    async def _started(self, group_id: str | None) -> Any:
        consumer = new_consumer(self._settings, client_id="sluice-ledger-catch-up",
                                group_id=group_id)
        try:
            await consumer.start()
        except BaseException:
            with contextlib.suppress(KafkaError, OSError):
                await consumer.stop()
            raise
        return consumer


class MemoryLedgerOffsets:
    """A fake: offsets a test sets, and a count of the questions asked."""

    def __init__(self, ends: Mapping[int, int] | None = None, *,
                 committed: Mapping[int, int] | None = None, members: bool = True):
        self.ends = dict(ends or {})
        self.committed_offsets = dict(committed or {})
        self.members = members
        self.end_reads = 0
        self.committed_reads = 0
        self.closed = 0

    async def result_ends(self) -> dict[int, int]:
        """The ends a test set."""
        self.end_reads += 1
        return dict(self.ends)

    async def committed(self, partitions: Collection[int]) -> dict[int, int]:
        """The committed offsets a test set (or moves on from its own code)."""
        self.committed_reads += 1
        return {p: o for p, o in self.committed_offsets.items() if p in partitions}

    async def ledger_has_members(self) -> bool:
        """Whether a test says a ledger runs."""
        return self.members

    async def close(self) -> None:
        """Counted, so a test sees clients are released."""
        self.closed += 1
