"""`sluice bench ledger`: how fast the ledger records usage, and how fast usage is read back.

Two measurements in a database of the bench's own (created on the server of
`--database-url` / `SLUICE_DATABASE_URL` and dropped afterwards, or on an embedded
PostgreSQL), so a real ledger never receives synthetic rows:

- queries: `--rows` usage rows (default 10 million, spread over `--days`) are generated
  in SQL, then the reports of `GET /v1/usage` and `sluice usage` (`usage_report`, the same
  code) and the two views are timed. Target: under 1 s each.
- writes: `--events` usage events, built as the ledger builds them, go through the
  ledger's own `write_batch` in batches of `--batch-size` (prices applied, spend accounts
  charged), into that filled table; then the first tenth again, as a redelivery. Target:
  20,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from broker.kafka import (
    ConsumerRecord,
)
from broker.settings import DatabaseSettings
from broker.stores.database import create_engine, normalize_url, upgrade_database
from broker.stores.usage import usage_report
from schemas import UsageEvent
from workers.ledger import Kind, LedgerBatch, LedgerRow, write_batch
from workers.ledger.rows import usage_row

console = Console()
WRITE_TARGET = 20_000  # events per second
QUERY_TARGET_S = 1.0
CHUNK = 250_000  # generated rows per statement: one progress step, a few seconds each
TENANTS, KEYS_PER_TENANT = 50, 4
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini")  # priced in the catalog

# A ledger as traffic leaves it: rows in time order, ~5% of requests retried once, tenants
# skewed (a few big ones), ~5% of calls without a key (Kafka-native), ~1% unpriced.
GENERATE = text("""
INSERT INTO usage_events (event_id, request_id, tenant, api_key_id, model, deployment,
    provider, provider_request_id, attempt, input_tokens, output_tokens, cost_usd,
    latency_ms, status, started_at, finished_at)
SELECT 'use_gen_' || i, 'req_gen_' || (i * 20 / 21), 'tenant_' || t,
       CASE WHEN r1 < 0.05 THEN NULL ELSE 'key_' || t || '_' || (i % :keys) END,
       m, m || CASE WHEN r2 < 0.5 THEN '-a' ELSE '-b' END,
       CASE WHEN r2 < 0.5 THEN 'openai' ELSE 'azure' END, 'chatcmpl-' || i,
       (i % 21 = 0)::int, tin, tout,
       CASE WHEN r1 > 0.99 THEN NULL ELSE (tin * 0.15 + tout * 0.6) / 1000000 END,
       lat, CASE WHEN r2 < 0.02 THEN 'failed' ELSE 'succeeded' END,
       at - lat * interval '1 millisecond', at
FROM (
    SELECT i, r1, r2, floor(CAST(:tenants AS int) * r3 * r3)::int AS t,
           models[1 + floor(cardinality(models) * r4 ^ 1.5)::int] AS m,
           50 + floor(r5 * 2000)::int AS tin, 10 + floor(r6 * 500)::int AS tout,
           round((r7 * 2000)::numeric, 1)::float8 AS lat,
           CAST(:end AS timestamptz) - (CAST(:total AS bigint) - i) * CAST(:step AS interval)
               AS at
    -- random() in this inner select list keeps PostgreSQL from evaluating it only once.
    FROM (SELECT i, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
                 random() AS r5, random() AS r6, random() AS r7, CAST(:models AS text[]) AS models
          FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i) AS g
) AS v
""")


@contextmanager
def _bench_database(url: str | None) -> Iterator[str]:
    """A fresh database URL: on the given server (dropped at the end) or an embedded one."""
    if url is None:
        from broker.embedded import EmbeddedPostgres

        with EmbeddedPostgres() as postgres:
            yield postgres.url("sluice_ledger_bench")
        return
    server = make_url(normalize_url(url))
    name = f"sluice_ledger_bench_{uuid.uuid4().hex[:8]}"
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_drop(server.render_as_string(hide_password=False), name))


async def _drop(maintenance_url: str, name: str) -> None:
    engine = create_async_engine(maintenance_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


async def generate(engine: AsyncEngine, rows: int, days: float, end: datetime,
                   on_progress: Callable[[int], None] = lambda n: None) -> None:
    """Fill `usage_events` with `rows` synthetic rows evenly over `days` days up to `end`.

    The way a restore would: secondary indexes and the rollup trigger off while the rows go
    in (two connections, one per core), then the indexes built and the rollup rebuilt once.
    The time is not part of any figure; this only makes a 10-million-row run take minutes.
    """
    async with engine.begin() as connection:
        indexes = [(row.indexname, row.indexdef) for row in await connection.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'usage_events' "
            "AND indexname LIKE 'ix\\_%'"))]
        for name, _ in indexes:
            await connection.execute(text(f'DROP INDEX "{name}"'))
        await connection.execute(text("ALTER TABLE usage_events DISABLE TRIGGER usage_rollup_add"))
    step = timedelta(days=days) / max(rows, 1)
    slots = asyncio.Semaphore(2)

    async def chunk(first: int) -> None:
        last = min(rows, first + CHUNK - 1)
        async with slots, engine.begin() as connection:
            await connection.execute(GENERATE, {
                "first": first, "last": last, "total": rows, "end": end, "step": step,
                "tenants": TENANTS, "keys": KEYS_PER_TENANT, "models": list(MODELS)})
        on_progress(last - first + 1)

    await asyncio.gather(*(chunk(first) for first in range(1, rows + 1, CHUNK)))
    for _, definition in indexes:
        async with engine.begin() as connection:
            await connection.execute(text(definition))
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE usage_events ENABLE TRIGGER usage_rollup_add"))
        await connection.execute(text("SELECT sluice_usage_rollup_rebuild()"))
    async with engine.connect() as connection:
        await connection.execute(text("ANALYZE usage_events"))
        await connection.execute(text("ANALYZE usage_rollup"))
        await connection.commit()


def _queries(engine: AsyncEngine, now: datetime) -> dict[str, Callable[[], Awaitable[int]]]:
    """The timed queries; each returns how many rows it answered."""

    def report(days: int, *group_by: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            rows = await usage_report(engine, start=now - timedelta(days=days), end=now,
                                      group_by=group_by)
            return len(rows)

        return run

    def view(sql: str, **params: Any) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            async with engine.connect() as connection:
                return len((await connection.execute(text(sql), params)).all())

        return run

    today = now.date()
    return {
        "report model,day 30d": report(30, "model", "day"),
        "report tenant 1d": report(1, "tenant"),
        "report key,model 7d": report(7, "key", "model"),
        "view usage_daily 30d": view("SELECT * FROM usage_daily WHERE day > :since",
                                since=today - timedelta(days=30)),
        "view spend_by_tenant_month": view(
            "SELECT * FROM spend_by_tenant_month WHERE month = :month",
            month=today.replace(day=1)),
    }


async def time_queries(engine: AsyncEngine, now: datetime,
                       runs: int = 3) -> dict[str, dict[str, float]]:
    """Seconds of the first run and the median of `runs`, per query."""
    figures: dict[str, dict[str, float]] = {}
    for name, query in _queries(engine, now).items():
        times, answered = [], 0
        for _ in range(runs):
            started = time.perf_counter()
            answered = await query()
            times.append(time.perf_counter() - started)
        figures[name] = {"first_s": round(times[0], 3),
                         "median_s": round(statistics.median(times), 3), "rows": answered}
    return figures


def usage_rows(count: int, now: datetime) -> list[LedgerRow]:
    """Usage rows as the ledger decodes them from Kafka (worker ids, catalog models)."""
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        "sluice.usage", 0, 0, 0, 0, b"k", b"{}", None, 1, 2, ())
    rows = []
    for index in range(count):
        tenant = index * 7 % TENANTS
        finished = now - timedelta(milliseconds=count - index)
        event = UsageEvent(
            event_id=f"use_{uuid.uuid4().hex}", request_id=f"req_{uuid.uuid4().hex}",
            tenant=f"tenant_{tenant}",
            api_key_id=f"key_{tenant}_{index % KEYS_PER_TENANT}" if index % 20 else None,
            model=MODELS[index % len(MODELS)], deployment="sim", provider="openai",
            provider_request_id=f"chatcmpl-{index}", input_tokens=100 + index % 1900,
            output_tokens=10 + index % 490, latency_ms=250.0, status="succeeded",
            started_at=finished - timedelta(milliseconds=250), finished_at=finished)
        rows.append(LedgerRow(Kind.USAGE, event.event_id, usage_row(event), record))
    return rows


async def time_writes(engine: AsyncEngine, rows: list[LedgerRow], batch_size: int,
                      on_progress: Callable[[int], None] = lambda n: None,
                      writers: int = 1) -> dict[str, float]:
    """Events per second through `write_batch` by `writers` ledger instances at once, then
    for a redelivery of the first tenth.

    Usage is keyed by tenant on Kafka, so each ledger instance of a group owns a share of
    the tenants: writer i gets the tenants that hash to it, as a partition would.
    """

    def batch(part: list[LedgerRow]) -> LedgerBatch:
        planned = LedgerBatch()
        # Pricing fills in values in place: a redelivered batch gets fresh dicts, like a
        # record decoded again.
        planned.rows[Kind.USAGE] = [LedgerRow(r.kind, r.key, dict(r.values), r.record)
                                    for r in part]
        return planned

    shares: list[list[LedgerRow]] = [[] for _ in range(writers)]
    for row in rows:
        shares[zlib.crc32(row.values["tenant"].encode()) % writers].append(row)
    queues = [[batch(share[i:i + batch_size]) for i in range(0, len(share), batch_size)]
              for share in shares]
    again = [batch(b.rows[Kind.USAGE]) for b in queues[0][:max(1, len(queues[0]) // 10)]]
    seconds: list[float] = []

    async def write(queue: list[LedgerBatch]) -> None:
        for planned in queue:
            began = time.perf_counter()
            refused = await write_batch(engine, planned)
            seconds.append(time.perf_counter() - began)
            if refused:
                raise RuntimeError(f"the ledger refused bench rows: {refused[0].reason}")
            on_progress(len(planned))

    started = time.perf_counter()
    await asyncio.gather(*(write(queue) for queue in queues))
    elapsed = time.perf_counter() - started
    started = time.perf_counter()
    for planned in again:
        await write_batch(engine, planned)
    redelivered = sum(len(b) for b in again) / (time.perf_counter() - started)
    ordered = sorted(seconds)
    return {
        "writers": writers,
        "events_per_s": round(len(rows) / elapsed),
        "batch_p50_ms": round(statistics.median(seconds) * 1000, 1),
        "batch_p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
        "redelivered_events_per_s": round(redelivered),
    }


async def measure_ledger(url: str, *, rows: int, days: float, events: int,
                         batch_size: int, writers: int = 1) -> dict[str, Any]:
    """Migrate the database at `url`, generate, time the queries, then the writes."""
    await upgrade_database(url)
    engine = create_engine(DatabaseSettings(database_url=url,
                                           database_pool_size=max(2, writers)))
    now = datetime.now(UTC)
    try:
        with _progress() as progress:
            task = progress.add_task(f"generating {rows:,} usage rows", total=rows)
            started = time.perf_counter()
            await generate(engine, rows, days, now, lambda n: progress.advance(task, n))
            generated_s = time.perf_counter() - started
        console.print(f"generated {rows:,} rows in {generated_s:.1f} s")
        queries = await time_queries(engine, now)
        prepared = usage_rows(events, datetime.now(UTC))
        with _progress() as progress:
            task = progress.add_task(f"writing {events:,} events", total=events)
            writes = await time_writes(engine, prepared, batch_size,
                                       lambda n: progress.advance(task, n), writers)
    finally:
        await engine.dispose()
    return {"rows": rows, "days": days, "generated_s": round(generated_s, 1), "events": events,
            "batch_size": batch_size, "writes": writes, "queries": queries}


def _progress() -> Progress:
    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                    transient=True)


def _print(figures: dict[str, Any]) -> bool:
    table = Table(title=f"sluice bench ledger — {figures['rows']:,} usage rows over "
                        f"{figures['days']:g} days")
    for column in ("measurement", "first", "median of 3", "rows", "target", "met"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    writes = figures["writes"]
    write_ok = writes["events_per_s"] >= WRITE_TARGET
    table.add_row(f"write_batch, {figures['batch_size']:,}/batch, "
                  f"{writes.get('writers', 1)} ledger(s)",
                  f"{writes['events_per_s']:,} ev/s", "", f"{figures['events']:,}",
                  f"≥ {WRITE_TARGET:,} ev/s", "yes" if write_ok else "[red]no[/]")
    table.add_row("  redelivered", f"{writes['redelivered_events_per_s']:,} ev/s",
                  "", "", "", "")
    slow = [name for name, q in figures["queries"].items() if q["median_s"] >= QUERY_TARGET_S]
    for name, query in figures["queries"].items():
        table.add_row(name, f"{query['first_s'] * 1000:,.0f} ms",
                      f"{query['median_s'] * 1000:,.0f} ms", f"{query['rows']:,}",
                      f"< {QUERY_TARGET_S * 1000:.0f} ms",
                      "[red]no[/]" if name in slow else "yes")
    console.print(table)
    print(json.dumps(figures))
    if not write_ok:
        console.print("Next: most of a batch is PostgreSQL maintaining the indexes of "
                      "usage_events (docs/BENCHMARKS.md, Ledger); fewer indexes or a faster "
                      "disk and CPU for PostgreSQL, not client code, move this figure.")
    if slow:
        console.print(f"Next: EXPLAIN (ANALYZE, BUFFERS) {', '.join(slow)} and add the index "
                      "or rollup it lacks in a new migration.")
    if write_ok and not slow:
        console.print("Next: record the JSON line in docs/BENCHMARKS.md with the command "
                      "that made it.")
    return write_ok and not slow


def run_ledger_bench(args: argparse.Namespace) -> int:
    """`sluice bench ledger`: print the figures; exit 1 when a target is missed."""
    url = args.database_url or os.environ.get("SLUICE_DATABASE_URL")
    with _bench_database(url) as bench_url:
        figures = asyncio.run(measure_ledger(bench_url, rows=args.rows, days=args.days,
                                             events=args.events, batch_size=args.batch_size,
                                             writers=args.writers))
    figures["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    figures["machine"] = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    return 0 if _print(figures) else 1
