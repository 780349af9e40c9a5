"""The takeover catch-up: wait for the ledger's committed offsets, capped, shared, or not at all.

Driven with the fake offsets reader (`MemoryLedgerOffsets`) and a fake clock whose sleep
moves time (and, where a test says so, the ledger) forward: no test waits for real.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from broker import clock
from broker.config import parse_config
from broker.kafka import (
    ConsumerRecord,
    TopicPartition,
    encode,
    ensure_topics,
    new_consumer,
    new_producer,
    topics_for,
)
from broker.kafka.ledger_offsets import KafkaLedgerOffsets, MemoryLedgerOffsets, ledger_group
from broker.kafka.memory import memory_broker
from broker.settings import KafkaSettings, WorkerSettings
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest, Lane
from workers.inference import InferencePool
from workers.inference.consumer import ModelConsumer
from workers.inference.ledger_catch_up import LedgerCatchUp, catch_up_for
from workers.inference.results import NoResultsOfRecord
from workers.providers.simulated import SimulatedProvider


class FakeClock(clock.FakeClock):
    """Monotonic time that moves only when slept; `on_sleep` lets the ledger progress."""

    def __init__(self, on_sleep: Callable[[], None] = lambda: None):
        super().__init__()
        self.sleeps = 0
        self._on_sleep = on_sleep

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        self._on_sleep()


def catch_up(offsets: MemoryLedgerOffsets, clock: FakeClock) -> LedgerCatchUp:
    return LedgerCatchUp(offsets, max_wait_s=30.0, poll_s=0.2, sleep=clock.sleep, clock=clock)


async def test_waits_until_the_ledger_committed_every_captured_end() -> None:
    offsets = MemoryLedgerOffsets({0: 5, 1: 3, 2: 0}, committed={0: 2, 1: 3})
    seen_at_each_sleep: list[int] = []

    def ledger_reads_one() -> None:
        seen_at_each_sleep.append(offsets.committed_offsets[0])
        offsets.committed_offsets[0] += 1
        offsets.ends[0] += 1  # results published after the capture are not waited for

    clock = FakeClock(ledger_reads_one)
    assert await catch_up(offsets, clock).after_takeover(time.time()) is True
    # Partition 0 went 2 → 5 one record per poll; the wait ended exactly when it reached 5.
    assert seen_at_each_sleep == [2, 3, 4]
    assert offsets.committed_offsets[0] == 5
    assert offsets.end_reads == 1
    assert offsets.closed == 1


async def test_gives_up_at_the_cap_and_names_the_lag(caplog: pytest.LogCaptureFixture) -> None:
    offsets = MemoryLedgerOffsets({0: 10, 1: 4}, committed={0: 3, 1: 4}, members=True)
    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="sluice.worker"):
        assert await catch_up(offsets, clock).after_takeover(time.time()) is True
    assert clock.now - 1000.0 == pytest.approx(30.0)
    assert clock.sleeps == 150  # 30 s / 0.2 s: it kept polling, then stopped
    assert "the ledger is 7 results behind (partitions [0])" in caplog.text
    assert "did not catch up" in caplog.text
    assert offsets.closed == 1


async def test_a_ledger_that_is_down_is_waited_for_its_grace_only(
        caplog: pytest.LogCaptureFixture) -> None:
    # It committed before (so it exists) but has no member now: a restart gets the grace,
    # a ledger that stays down does not hold the takeover for the whole cap.
    offsets = MemoryLedgerOffsets({0: 10}, committed={0: 3}, members=False)
    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="sluice.worker"):
        assert await catch_up(offsets, clock).after_takeover(time.time()) is True
    assert clock.now - 1000.0 == pytest.approx(10.0)
    assert "no ledger has run for 10 s" in caplog.text


async def test_a_ledger_restarting_within_the_grace_is_waited_for() -> None:
    offsets = MemoryLedgerOffsets({0: 10}, committed={0: 3}, members=False)

    def ledger_restarts() -> None:
        if clock.now - 1000.0 >= 6.0:  # joins after 6 s, then reads everything
            offsets.members = True
            offsets.committed_offsets[0] = 10

    clock = FakeClock(ledger_restarts)
    assert await catch_up(offsets, clock).after_takeover(time.time()) is True
    assert offsets.committed_offsets[0] == 10
    assert clock.now - 1000.0 == pytest.approx(6.0, abs=0.3)


async def test_a_stopping_worker_stops_waiting() -> None:
    offsets = MemoryLedgerOffsets({0: 10}, committed={0: 3})
    stop = asyncio.Event()
    clock = FakeClock(stop.set)
    assert await catch_up(offsets, clock).after_takeover(time.time(), stop) is True
    assert clock.sleeps == 1


async def test_no_wait_when_no_ledger_ever_committed_and_none_runs() -> None:
    offsets = MemoryLedgerOffsets({0: 10, 1: 4}, committed={}, members=False)
    clock = FakeClock()
    assert await catch_up(offsets, clock).after_takeover(time.time()) is False
    assert clock.sleeps == 0


async def test_a_ledger_that_joined_but_never_committed_is_waited_for() -> None:
    offsets = MemoryLedgerOffsets({0: 2}, committed={}, members=True)
    clock = FakeClock(lambda: offsets.committed_offsets.update({0: 2}))
    assert await catch_up(offsets, clock).after_takeover(time.time()) is True
    assert clock.sleeps == 1


async def test_one_catch_up_serves_every_partition_taken_over_before_it() -> None:
    offsets = MemoryLedgerOffsets({0: 5}, committed={0: 4})
    clock = FakeClock(lambda: offsets.committed_offsets.update({0: 5}))
    lane = catch_up(offsets, clock)
    taken_over_at = time.time()
    first, second = await asyncio.gather(lane.after_takeover(taken_over_at),
                                         lane.after_takeover(taken_over_at))
    assert (first, second) == (True, True)
    # A later batch of the same takeover: covered by the catch-up that ended (its first
    # look may have come before that end, so it looks again; no second catch-up).
    assert await lane.after_takeover(taken_over_at) is True
    assert lane.started == 1
    assert offsets.end_reads == 1
    assert clock.sleeps == 1
    # A partition assigned after that catch-up started is a takeover of its own.
    assert await lane.after_takeover(time.time() + 1) is True
    assert lane.started == 2


async def test_without_results_of_record_nothing_is_awaited() -> None:
    settings = KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}")
    assert await catch_up_for(settings, NoResultsOfRecord()).after_takeover(time.time()) is False


# The real reader, on the in-memory broker


async def test_kafka_reader_reads_ends_committed_offsets_and_members() -> None:
    settings = KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}", topic_prefix="c.")
    results = topics_for(settings).results
    broker = memory_broker(settings.kafka_bootstrap)
    broker.create_topic(results, 2)
    broker.create_topic("c.usage", 1)
    for partition, count in ((0, 3), (1, 1)):
        for _ in range(count):
            broker.append(results, partition, b"k", b"{}", [])
    reader = KafkaLedgerOffsets(settings)
    assert await reader.result_ends() == {0: 3, 1: 1}
    assert await reader.committed([0, 1]) == {}
    assert await reader.ledger_has_members() is False
    ledger = new_consumer(settings, client_id="ledger", group_id=ledger_group("c."))
    ledger.subscribe(pattern=r"^c\.(results|usage)$")
    await ledger.start()
    try:
        await ledger.commit({TopicPartition(results, 0): 2})
        assert await reader.committed([0, 1]) == {0: 2}
        assert await reader.ledger_has_members() is True
    finally:
        await ledger.stop()
        await reader.close()


# The consumer: who waits


class RecordedFinalResults:
    """Final results the ledger records between the first look-up and the second."""

    def __init__(self, final_after_catch_up: set[str]):
        self.lookups: list[list[str]] = []
        self._final = final_after_catch_up

    async def already_final(self, request_ids: Collection[str]) -> set[str]:
        self.lookups.append(sorted(request_ids))
        return set() if len(self.lookups) == 1 else self._final.intersection(request_ids)

    async def moved(self, request_ids: Collection[str]) -> set[str]:
        return set()

    async def record_moved(self, request_ids: Collection[str]) -> None:
        raise AssertionError("nothing is moved to the batch topic here")


def _decoded(tp: TopicPartition, request_id: str, at: float,
             ) -> tuple[TopicPartition, Any, InferenceRequest]:
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        tp.topic, tp.partition, 0, int(at * 1000), 0, b"k", b"{}", None, 1, 2, ())
    request = InferenceRequest(
        id=request_id, model="m", created_at=datetime.now(UTC),
        body=ChatCompletionRequest(model="m", messages=[ChatMessage(role="user", content="x")]))
    return tp, record, request


def _lane(final: RecordedFinalResults, offsets: MemoryLedgerOffsets,
          clock: FakeClock) -> ModelConsumer:
    pool: Any = SimpleNamespace(final_results=final, kafka=None)
    return ModelConsumer(pool, "m", consumer=None, catch_up=catch_up(offsets, clock))  # type: ignore[arg-type]


async def test_a_redelivered_request_is_skipped_once_the_ledger_caught_up() -> None:
    offsets = MemoryLedgerOffsets({0: 7}, committed={0: 1})
    clock = FakeClock(lambda: offsets.committed_offsets.update({0: 7}))
    final = RecordedFinalResults({"answered"})
    lane = _lane(final, offsets, clock)
    tp = TopicPartition("t", 0)
    lane.assigned_at[tp] = time.time()
    done, waiting = await lane._already_final(
        [_decoded(tp, "answered", lane.assigned_at[tp] - 60)])
    assert (done, list(waiting)) == (set(), ["answered"])
    assert await lane._final_after_catch_up(waiting) == {"answered"}
    assert final.lookups == [["answered"], ["answered"]]
    assert clock.sleeps == 1


async def test_requests_produced_after_the_assignment_never_wait() -> None:
    offsets = MemoryLedgerOffsets({0: 7}, committed={0: 1})
    clock = FakeClock()
    final = RecordedFinalResults(set())
    lane = _lane(final, offsets, clock)
    tp = TopicPartition("t", 0)
    lane.assigned_at[tp] = time.time()
    # Within the clock-skew margin: checked against the results of record, never waited on.
    await lane._already_final([_decoded(tp, "new", lane.assigned_at[tp] + 1)])
    assert final.lookups == [["new"]]
    assert lane.catch_up.started == 0
    assert offsets.end_reads == 0


class _Pool(SimpleNamespace):
    """What `_dispatch` uses of a pool: requests it lets run are recorded as tasks."""

    def __init__(self, final: RecordedFinalResults):
        super().__init__(final_results=final, kafka=None, config=SimpleNamespace(models={"m"}),
                         tasks=[])
        self.provenance = SimpleNamespace(verify=self._verify)

    @staticmethod
    async def _verify(record: Any, request: InferenceRequest) -> InferenceRequest:
        return request

    def track(self, work: Any, lane: Any = None, tenant: Any = None) -> None:
        self.tasks.append(asyncio.ensure_future(work))

    def over_fair_share(self, tenant: str) -> bool:
        return False


def _recording_lane(pool: _Pool, catch_up_: LedgerCatchUp) -> tuple[ModelConsumer, list[str]]:
    """A lane on `pool` whose handling only records which requests it would call."""
    lane = ModelConsumer(pool, "m", consumer=None, catch_up=catch_up_)  # type: ignore[arg-type]
    handled: list[str] = []

    async def handle(tp: TopicPartition, record: Any, request: InferenceRequest) -> None:
        handled.append(request.id)

    lane._handle = handle  # type: ignore[method-assign]
    return lane, handled


def _records(tp: TopicPartition, requests: list[tuple[str, float]]) -> list[Any]:
    """Records of `tp` holding requests (id, produced at), at offsets 0, 1, ..."""
    records = []
    for offset, (request_id, at) in enumerate(requests):
        _, _, request = _decoded(tp, request_id, at)
        records.append(ConsumerRecord(tp.topic, tp.partition, offset, int(at * 1000), 0,
                                      b"k", encode(request), None, 1, 2, ()))
    return records


async def test_requests_taken_over_wait_without_holding_up_the_rest() -> None:
    ledger_moves = asyncio.Event()

    async def sleep_until_the_ledger_moves(seconds: float) -> None:
        await ledger_moves.wait()
        offsets.committed_offsets[0] = 7

    offsets = MemoryLedgerOffsets({0: 7}, committed={0: 1})
    final = RecordedFinalResults({"answered"})
    pool = _Pool(final)
    lane, handled = _recording_lane(
        pool, LedgerCatchUp(offsets, sleep=sleep_until_the_ledger_moves))
    tp = TopicPartition("t", 0)
    lane.assigned_at[tp] = time.time()
    records = _records(tp, [("answered", lane.assigned_at[tp] - 60),
                            ("fresh", lane.assigned_at[tp] + 60)])
    # Returns while the old request waits (a guard, not a timing: it used to wait inline).
    await asyncio.wait_for(lane._dispatch({tp: records}), 10)
    await asyncio.sleep(0.05)
    assert handled == ["fresh"]
    assert not all(task.done() for task in pool.tasks)
    ledger_moves.set()  # the ledger records the dead worker's answer
    await asyncio.gather(*pool.tasks)
    assert handled == ["fresh"]  # "answered" was found final: never called


class StuckOffsets(MemoryLedgerOffsets):
    """A coordinator that never answers the committed offsets (a client retrying without
    end)."""

    async def committed(self, partitions: Collection[int]) -> dict[int, int]:
        await asyncio.Event().wait()
        raise AssertionError("never answered")


async def test_a_question_kafka_never_answers_ends_at_the_cap(
    caplog: pytest.LogCaptureFixture
) -> None:
    offsets = StuckOffsets({0: 7})
    waiting = LedgerCatchUp(offsets, max_wait_s=0.05, stuck_question_s=0.05)
    with caplog.at_level(logging.WARNING, "sluice.worker"):
        assert await asyncio.wait_for(waiting.after_takeover(time.time()), 10) is True
    assert "did not answer how far the ledger has read" in caplog.text
    assert offsets.closed == 1


async def test_a_stopping_pool_ends_a_catch_up_and_gives_its_requests_back() -> None:
    offsets = StuckOffsets({0: 7})
    pool = _Pool(RecordedFinalResults({"answered"}))
    catch_up_ = LedgerCatchUp(offsets)  # the cap is 30 s: only close() ends it here
    lane, handled = _recording_lane(pool, catch_up_)
    tp = TopicPartition("t", 0)
    lane.assigned_at[tp] = time.time()
    await lane._dispatch({tp: _records(tp, [("taken-over", lane.assigned_at[tp] - 60)])})
    await asyncio.sleep(0.05)
    [waiting] = pool.tasks
    assert not waiting.done()
    await asyncio.wait_for(catch_up_.close(), 10)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert handled == [] and offsets.closed == 1
    assert lane.tracker.safe_position(tp) == 0  # never committed past: the next owner reads it


async def test_a_pool_stops_at_once_while_a_takeover_waits_for_the_ledger() -> None:
    kafka = KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}", topic_partitions=1,
                          kafka_trust_unsigned=True)
    config = parse_config({
        "models": {"m": {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}}})
    # Left by a worker that died: older than the new owner's assignment.
    _, _, request = _decoded(TopicPartition("t", 0), "taken-over", time.time() - 60)
    producer = new_producer(kafka, client_id="dead-worker")
    await ensure_topics(kafka, [topics_for(kafka).requests("m", Lane.INTERACTIVE)])
    await producer.start()
    await producer.send_and_wait(topics_for(kafka).requests("m", Lane.INTERACTIVE),
                                 encode(request), key=b"taken-over")
    await producer.stop()
    offsets = StuckOffsets({0: 7})
    # A long drain: only ending the catch-up lets this pool stop within the guard below.
    pool = InferencePool(kafka, WorkerSettings(), config, ["m"],
                         {"sim": SimulatedProvider("sim", config.deployments["sim"])},
                         RecordedFinalResults(set()), drain_timeout_s=120)
    pool.catch_up = LedgerCatchUp(offsets)
    stop = asyncio.Event()
    worker = asyncio.create_task(pool.run(stop))
    for _ in range(200):
        if pool.catch_up.started:
            break
        await asyncio.sleep(0.05)
    assert pool.catch_up.started == 1 and pool.slots.used == 1
    stop.set()
    await asyncio.wait_for(worker, 20)  # a guard: the drain alone would wait 120 s
    assert offsets.closed == 1 and pool.slots.used == 0


class TimingOutOffsets(MemoryLedgerOffsets):
    """A socket that times out (a TimeoutError of its own, not the catch-up's cap)."""

    async def committed(self, partitions: Collection[int]) -> dict[int, int]:
        raise TimeoutError("read timed out")


async def test_a_socket_timeout_is_kafka_unavailable_not_the_cap(
    caplog: pytest.LogCaptureFixture
) -> None:
    offsets = TimingOutOffsets({0: 7})
    with caplog.at_level(logging.WARNING, "sluice.worker"):
        # Unavailable: nothing more to look up (False), unlike a cap reached (True).
        assert await LedgerCatchUp(offsets).after_takeover(time.time()) is False
    assert "cannot read the ledger's progress (read timed out)" in caplog.text
    assert offsets.closed == 1
