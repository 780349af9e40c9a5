"""The ledger process survives kill -9 mid-batch and a PostgreSQL restart: one row per call.

Both tests run `sluice ledger` as a separate OS process against real Kafka (Tansu) and a
real PostgreSQL, produce a few thousand usage events and their results, break something,
and then check with reconcile (the code behind `sluice ledger reconcile`) that every event
is exactly one row, and that the spend accounts add up to the rows and to what was produced.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.embedded import EmbeddedPostgres
from broker.kafka import encode, ensure_topics, new_producer, topics_for
from broker.settings import DatabaseSettings, KafkaSettings
from broker.stores.database import create_engine, upgrade_database
from broker.stores.prices import price_book
from broker.stores.tables import usage_events
from schemas import InferenceResult, RequestStatus, UsageEvent
from tests.integration.stack import eventually
from workers.ledger.reconcile import reconcile
from workers.ledger.rows import usage_row

pytestmark = [pytest.mark.integration, pytest.mark.dev_broker]

MODEL = "gpt-4o-mini"  # priced in the seeded catalog: the ledger re-prices every row
DEPLOYMENT = "sim"
TENANTS = tuple(f"tenant-{n}" for n in range(6))  # the usage key: spreads over partitions
FINISHED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)  # one spend period for every event
EVENTS = 3000
BATCH_SIZE = 250  # several batches per burst, so "mid-batch" is one of many


@dataclass(frozen=True)
class Call:
    """One billed provider call: its usage event and its request's final result."""

    usage: UsageEvent
    result: InferenceResult


def calls(count: int) -> list[Call]:
    """`count` distinct calls with varied token counts, spread over the tenants."""
    made = []
    for n in range(count):
        request_id = f"req_{uuid.uuid4().hex}"
        tenant = TENANTS[n % len(TENANTS)]
        usage = UsageEvent(
            event_id=f"use_{uuid.uuid4().hex}", request_id=request_id, tenant=tenant,
            model=MODEL, deployment=DEPLOYMENT, provider="openai",
            provider_request_id=f"chatcmpl-{n}", input_tokens=10 + n % 97,
            output_tokens=5 + n % 31, cost_usd=Decimal("0.0001"), latency_ms=12.5,
            status="succeeded", started_at=FINISHED - timedelta(seconds=1), finished_at=FINISHED,
        )
        result = InferenceResult(
            request_id=request_id, model=MODEL, status=RequestStatus.SUCCEEDED, tenant=tenant,
            deployment=DEPLOYMENT, provider="openai", attempts=1,
            created_at=FINISHED - timedelta(seconds=2), finished_at=FINISHED,
        )
        made.append(Call(usage, result))
    return made


async def produce(kafka: KafkaSettings, batch: Sequence[Call]) -> None:
    """Publish the calls' usage events (keyed by tenant) and results (keyed by request).

    They go out as the producer batches them, like a busy worker's, so each partition ends
    with a multi-record batch: Tansu answers ListOffsets(latest) with that batch's base
    offset + 1, and reconcile must still read to the true end (`events == produced`).
    """
    topics = topics_for(kafka)
    await ensure_topics(kafka, [topics.usage, topics.results])
    producer = new_producer(kafka, client_id="test-resilience", linger_ms=5)
    await producer.start()
    try:
        sent = []
        for call in batch:
            sent.append(await producer.send(
                topics.usage, value=encode(call.usage), key=call.usage.tenant.encode()))
            sent.append(await producer.send(
                topics.results, value=encode(call.result), key=call.result.request_id.encode()))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


class LedgerProcess:
    """`sluice ledger` as a child process, its log kept in a file for the test to read."""

    def __init__(self, kafka: KafkaSettings, database_url: str, log: Path) -> None:
        self.log = log
        self._env = {
            **os.environ,
            **kafka.as_env(),
            "SLUICE_DATABASE_URL": database_url,
            "SLUICE_DATABASE_POOL_SIZE": "2",
            "SLUICE_LEDGER_BATCH_SIZE": str(BATCH_SIZE),
            "SLUICE_LEDGER_FLUSH_INTERVAL_S": "0.02",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        """Start one more ledger process (its output appended to the log)."""
        with open(self.log, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "sluice", "ledger"], env=self._env,
                                       stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def failed_batches(self) -> int:
        """How many times a ledger logged that a batch was not recorded (and will be retried)."""
        return self.log.read_text(errors="replace").count("not recorded")

    def stop_all(self) -> None:
        """SIGTERM (a clean stop) every process still running."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)



async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql))).scalar()


async def rows(engine: AsyncEngine) -> int:
    return int(await scalar(engine, "select count(*) from usage_events"))


async def assert_recorded_once(kafka: KafkaSettings, engine: AsyncEngine,
                               produced: Sequence[Call]) -> None:
    """Reconcile finds no gap and no double charge; rows, requests and spend add up."""
    try:
        await eventually(lambda: _equals(rows(engine), len(produced)), 60)
    except AssertionError:
        report = await reconcile(kafka, engine)
        raise AssertionError(
            f"{await rows(engine)} usage rows for {len(produced)} events; reconcile: "
            f"{len(report.missing)} missing, {len(report.duplicates)} duplicate"
        ) from None
    await eventually(lambda: _equals(
        scalar(engine, "select count(*) from requests where status = 'succeeded'"),
        len(produced)), 60)

    report = await reconcile(kafka, engine)
    assert report.missing == [] and report.duplicates == [], report
    assert report.ok and report.events == len(produced) and report.poison == 0
    async with engine.connect() as connection:
        ids = set((await connection.execute(select(usage_events.c.event_id))).scalars())
    assert ids == {call.usage.event_id for call in produced}

    # What every tenant should have been charged: the catalog price in force at the time.
    async with engine.connect() as connection:
        price = (await price_book(connection, [MODEL])).find(MODEL, DEPLOYMENT, FINISHED)
    assert price is not None
    expected: dict[str, tuple[Decimal, int]] = {}
    for call in produced:
        usd, tokens = expected.get(call.usage.tenant, (Decimal(0), 0))
        expected[call.usage.tenant] = (
            usd + price.cost(call.usage.input_tokens, call.usage.output_tokens),
            tokens + call.usage.input_tokens + call.usage.output_tokens,
        )
    async with engine.connect() as connection:
        recorded = {row.tenant: (row.usd, int(row.tokens)) for row in await connection.execute(
            text("select tenant, sum(cost_usd) as usd, sum(input_tokens + output_tokens) "
                 "as tokens from usage_events group by tenant"))}
        accounts = {row.scope.removeprefix("tenant:"): (row.spent_usd, int(row.spent_tokens))
                    for row in await connection.execute(text(
                        "select scope, spent_usd, spent_tokens from spend_accounts "
                        "where scope like 'tenant:%' and period = :period"),
                        {"period": FINISHED.date().replace(day=1)})}
    assert recorded == expected
    assert accounts == expected


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_kill_9_mid_batch_then_restart(
    kafka_settings: KafkaSettings, database_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    produced = calls(EVENTS)
    before, after = produced[: EVENTS // 3], produced[EVENTS // 3 :]
    ledger = LedgerProcess(kafka_settings, database_url, tmp_path / "ledger.log")
    try:
        await _kill_mid_batch(kafka_settings, engine, ledger, before, after)
        ledger.start()
        await assert_recorded_once(kafka_settings, engine, produced)
    finally:
        ledger.stop_all()
    print(f"after the restart: {ledger.failed_batches()} failed batches")


async def _kill_mid_batch(kafka: KafkaSettings, engine: AsyncEngine, ledger: LedgerProcess,
                          before: Sequence[Call], after: Sequence[Call]) -> None:
    blocker = after[len(after) // 2].usage
    # An uncommitted row with one later event's id: the ledger's idempotent insert of that
    # event has to wait for this transaction, so the ledger is held inside a batch, with
    # part of it written and nothing committed, for as long as the test likes. Triggers
    # are off for it (replica role), so it locks that one event id and no rollup or account
    # row that other batches write as well.
    holder = await engine.connect()
    hold = await holder.begin()
    await holder.execute(text("SET LOCAL session_replication_role = replica"))
    await holder.execute(insert(usage_events), [usage_row(blocker)])
    try:
        first = ledger.start()
        await produce(kafka, before)
        await eventually(lambda: _equals(rows(engine), len(before)), 45)

        await produce(kafka, after)
        waiting = (
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and wait_event_type = 'Lock' and state = 'active' and query ilike '%usage_events%'"
        )
        await eventually(lambda: _equals(scalar(engine, waiting), 1), 45)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = await rows(engine)
        assert len(before) <= at_kill < EVENTS, "the kill was not mid-way"
        print(f"kill -9 with {at_kill}/{EVENTS} usage rows committed and a batch half written")
    finally:
        await hold.rollback()  # the dead ledger's transaction now ends, uncommitted
        await holder.close()


async def test_postgres_restart_while_usage_flows(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    # Its own server: the session's PostgreSQL is shared by every other test. A data
    # directory we pass in is kept by stop(), so the restart finds the same cluster. Not
    # under tmp_path: when root runs the tests, the server runs as another user but keeps
    # root's group, and pytest's 0700 root directories (even made o+x) stay closed to it.
    data_dir = Path(tempfile.mkdtemp(prefix="sluice-pg-restart-"))
    postgres = EmbeddedPostgres(data_dir=data_dir)
    await asyncio.to_thread(postgres.start)
    url = postgres.url("ledger_restart")
    engine = create_engine(DatabaseSettings(database_url=url, database_pool_size=3))
    ledger = LedgerProcess(kafka_settings, url, tmp_path / "ledger.log")
    try:
        await upgrade_database(url)
        produced = calls(EVENTS)
        third = EVENTS // 3
        steady, outage, recovery = produced[:third], produced[third:-third], produced[-third:]
        process = ledger.start()

        await produce(kafka_settings, steady)
        await eventually(lambda: _is_positive(rows(engine)), 45)
        # Fast shutdown (SIGINT) while events keep arriving: open transactions are aborted.
        await asyncio.gather(asyncio.to_thread(postgres.stop), produce(kafka_settings, outage))
        # A few failed attempts (backoff grows) show it met the outage; exiting fails fast.
        await eventually(
            lambda: _true(ledger.failed_batches() >= 3 or process.poll() is not None), 30)
        assert process.poll() is None, "the ledger exited instead of waiting for PostgreSQL"

        # Same data directory, same port.
        await asyncio.gather(asyncio.to_thread(postgres.start), produce(kafka_settings, recovery))
        await assert_recorded_once(kafka_settings, engine, produced)
        assert process.poll() is None, "the ledger exited after PostgreSQL came back"
        assert "batch recorded after" in ledger.log.read_text(errors="replace")
        print(f"PostgreSQL restart: {ledger.failed_batches()} failed batches retried")
    finally:
        ledger.stop_all()
        await engine.dispose()
        await asyncio.to_thread(postgres.stop)
        shutil.rmtree(data_dir, ignore_errors=True)


async def _is_positive(value: Any) -> bool:
    return bool(await value > 0)


async def _true(value: bool) -> bool:
    return value
