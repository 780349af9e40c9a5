"""What sluicegate relies on from Kafka, as checks run against every implementation.

`tests/unit/test_kafka_memory.py` runs them on the in-memory port;
`tests/integration/test_kafka_port.py` on Apache Kafka and Tansu. If the fake drifts from
the real thing, one of the two fails.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from broker.kafka import (
    ApplyLoop,
    Consumer,
    ConsumerRecord,
    RebalanceListener,
    TopicPartition,
    delete_topics,
    ensure_topics,
    is_too_large,
    new_consumer,
    new_producer,
    partition_ids,
)
from broker.settings import KafkaSettings

Check = Callable[[KafkaSettings], Awaitable[None]]


def _topic(settings: KafkaSettings, name: str) -> str:
    return f"{settings.topic_prefix}{name}-{uuid.uuid4().hex[:6]}"


async def _poll_until(
    consumer: Consumer, done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    timeout_s: float = 20.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    while not done(records):
        assert time.monotonic() < deadline, f"only {len(records)} records in {timeout_s}s"
        for batch in (await consumer.getmany(timeout_ms=100)).values():
            records.extend(batch)
    return records


async def keyed_records_keep_their_order_and_partition(settings: KafkaSettings) -> None:
    topic = _topic(settings, "order")
    await ensure_topics(settings, [topic], partitions=3)
    assert await partition_ids(settings, topic) == [0, 1, 2]
    producer = new_producer(settings, client_id="contract")
    await producer.start()
    try:
        for index in range(12):
            await producer.send_and_wait(topic, f"{index}".encode(),
                                         key=f"k{index % 4}".encode())
    finally:
        await producer.stop()
    consumer = new_consumer(settings, client_id="contract", group_id=f"{topic}.g")
    consumer.subscribe([topic])
    await consumer.start()
    try:
        records = await _poll_until(consumer, lambda got: len(got) >= 12)
    finally:
        await consumer.stop()
    assert len(records) == 12
    by_key: dict[bytes | None, set[int]] = {}
    for record in records:
        by_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(partitions) == 1 for partitions in by_key.values()), by_key
    for key in by_key:
        values = [int(r.value or b"") for r in records if r.key == key]
        assert values == sorted(values)
    for partition in {r.partition for r in records}:
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))


async def a_group_resumes_from_its_committed_offset(settings: KafkaSettings) -> None:
    topic = _topic(settings, "commit")
    await ensure_topics(settings, [topic], partitions=1)
    producer = new_producer(settings, client_id="contract")
    await producer.start()
    for index in range(6):
        await producer.send_and_wait(topic, b"%d" % index, key=b"k")
    await producer.stop()
    tp = TopicPartition(topic, 0)
    group = f"{topic}.g"
    first = new_consumer(settings, client_id="contract", group_id=group)
    first.subscribe([topic])
    await first.start()
    try:
        records = await _poll_until(first, lambda got: len(got) >= 6)
        await first.commit({tp: records[3].offset})  # 0..2 done; 3 onwards not yet
        assert await first.committed(tp) == 3
    finally:
        await first.stop()
    second = new_consumer(settings, client_id="contract", group_id=group)
    second.subscribe([topic])
    await second.start()
    try:
        again = await _poll_until(second, lambda got: len(got) >= 3)
    finally:
        await second.stop()
    assert [r.value for r in again] == [b"3", b"4", b"5"]


class _Seen(RebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned: list[set[TopicPartition]] = []
        self.revoked: list[set[TopicPartition]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.revoked.append(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned.append(set(assigned))


async def a_group_shares_partitions_and_takes_over_a_leavers(settings: KafkaSettings) -> None:
    topic = _topic(settings, "group")
    await ensure_topics(settings, [topic], partitions=4)
    everything = {TopicPartition(topic, p) for p in range(4)}
    group = f"{topic}.g"
    listeners = [_Seen(), _Seen()]
    consumers: list[Any] = []
    for listener in listeners:
        consumer = new_consumer(settings, client_id="contract", group_id=group)
        consumer.subscribe([topic], listener=listener)
        await consumer.start()
        consumers.append(consumer)
    try:
        deadline = time.monotonic() + 30
        while True:  # both keep polling, as members must, until the split settles
            await asyncio.gather(*(c.getmany(timeout_ms=100) for c in consumers))
            shares = [c.assignment() for c in consumers]
            if all(shares) and shares[0] | shares[1] == everything:
                break
            assert time.monotonic() < deadline, shares
        assert not shares[0] & shares[1]
        await consumers[1].stop()
        while consumers[0].assignment() != everything:
            assert time.monotonic() < deadline + 30, consumers[0].assignment()
            await consumers[0].getmany(timeout_ms=100)
        assert listeners[0].assigned[-1] == everything
        assert listeners[0].revoked, "the survivor gave up its share before taking all"
    finally:
        await consumers[0].stop()
        await consumers[1].stop()


async def paused_partitions_are_not_fetched(settings: KafkaSettings) -> None:
    topic = _topic(settings, "pause")
    await ensure_topics(settings, [topic], partitions=2)
    producer = new_producer(settings, client_id="contract")
    await producer.start()
    for partition in (0, 1):
        await producer.send_and_wait(topic, b"x", key=b"k", partition=partition)
    await producer.stop()
    consumer = new_consumer(settings, client_id="contract", group_id=None)
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    await consumer.start()
    try:
        consumer.pause(TopicPartition(topic, 1))
        got = await _poll_until(consumer, lambda records: len(records) >= 1)
        await asyncio.sleep(0.3)
        got += [r for batch in (await consumer.getmany(timeout_ms=300)).values() for r in batch]
        assert {r.partition for r in got} == {0}
        consumer.resume(TopicPartition(topic, 1))
        later = await _poll_until(consumer, lambda records: len(records) >= 1)
        assert {r.partition for r in later} == {1}
    finally:
        await consumer.stop()


async def records_over_the_limit_are_refused_at_once(settings: KafkaSettings) -> None:
    limited = settings.model_copy(update={"max_message_bytes": 4096})
    topic = _topic(settings, "size")
    await ensure_topics(settings, [topic], partitions=1)
    producer = new_producer(limited, client_id="contract")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x" * 2000, key=b"k")
        try:
            await producer.send_and_wait(topic, b"x" * 5000, key=b"k")
        except Exception as exc:  # the port's kind, whatever class the client raises
            assert is_too_large(exc), repr(exc)
        else:
            raise AssertionError("a record over the limit was accepted")
    finally:
        await producer.stop()


async def deleted_topics_are_gone(settings: KafkaSettings) -> None:
    topic = _topic(settings, "delete")
    await ensure_topics(settings, [topic], partitions=2)
    assert await partition_ids(settings, topic) == [0, 1]
    await delete_topics(settings, [topic])
    # Listed, not described: describing a missing topic makes Tansu create it again.
    consumer = new_consumer(settings, client_id="contract", group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + 15
        while topic in await consumer.topics():
            assert time.monotonic() < deadline, "topic still listed"
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


async def the_apply_loop_commits_only_what_was_applied(settings: KafkaSettings) -> None:
    """Guarantee 3's loop: a failing batch is redone after a backoff, never skipped, and
    offsets are committed only once `apply` returned."""
    topic = _topic(settings, "apply")
    await ensure_topics(settings, [topic], partitions=2)
    producer = new_producer(settings, client_id="contract")
    await producer.start()
    for index in range(10):
        await producer.send_and_wait(topic, b"%d" % index, key=b"k%d" % (index % 3))
    await producer.stop()
    group = f"{topic}.g"
    applied: list[bytes] = []
    attempts = 0
    stop = asyncio.Event()

    async def apply(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:  # the database is away for the first two tries
            raise ConnectionRefusedError("database down (test)")
        applied.extend(record.value or b"" for record in records)
        if len(applied) >= 10:
            stop.set()

    loop = ApplyLoop(settings, name="contract", group_id=group, apply=apply,
                     transient=(ConnectionRefusedError,), topics=[topic],
                     min_backoff_s=0.05, max_backoff_s=0.2)
    await asyncio.wait_for(loop.run(stop), 60)
    assert sorted(applied, key=int) == [b"%d" % i for i in range(10)], applied
    assert len(applied) == 10, "a batch was applied twice"
    assert attempts >= 3
    reader = new_consumer(settings, client_id="contract", group_id=group)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partition_ids(settings, topic)]
        ends = await reader.end_offsets(tps)
        assert {tp: await reader.committed(tp) or 0 for tp in tps} == ends
    finally:
        await reader.stop()


async def a_subscription_without_a_group_reads_every_partition(settings: KafkaSettings) -> None:
    """How every worker hears every cancel (workers/inference/cancels.py)."""
    topic = _topic(settings, "nogroup")
    await ensure_topics(settings, [topic], partitions=3)
    consumer = new_consumer(settings, client_id="contract", group_id=None,
                            auto_offset_reset="earliest")
    consumer.subscribe([topic])
    await consumer.start()
    producer = new_producer(settings, client_id="contract")
    await producer.start()
    try:
        for index in range(6):
            await producer.send_and_wait(topic, b"%d" % index, partition=index % 3)
        records = await _poll_until(consumer, lambda got: len(got) >= 6)
        assert sorted(record.value or b"" for record in records) == [b"%d" % i for i in range(6)]
        assert {record.partition for record in records} == {0, 1, 2}
    finally:
        await producer.stop()
        await consumer.stop()


CONTRACT: list[Check] = [
    keyed_records_keep_their_order_and_partition,
    a_group_resumes_from_its_committed_offset,
    a_group_shares_partitions_and_takes_over_a_leavers,
    paused_partitions_are_not_fetched,
    records_over_the_limit_are_refused_at_once,
    deleted_topics_are_gone,
    the_apply_loop_commits_only_what_was_applied,
    a_subscription_without_a_group_reads_every_partition,
]
