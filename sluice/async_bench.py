"""`sluice bench async`: how fast the stack accepts queued prompts, and answers them all.

Two figures, one run: the accept rate (`POST /v1/requests` answered 202, which means Kafka
has the request), and prompts per second end to end, from the first submission until the
ledger has recorded every one of them as final. The ledger is read straight from the
PostgreSQL of the stack `sluice dev` started (`postgres_dsn` in its endpoints file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
from rich.console import Console

from broker.errors import ConfigError
from sluice.loadgen import percentile, run_load

console = Console()

# This run's answers only: a run right after another must not count the earlier run's
# answers the ledger records meanwhile (created_at is when ingress accepted the request).
_FINAL = "select count(*) from requests where status <> 'queued' and created_at >= $1"


def _stack(args: argparse.Namespace) -> tuple[str, str, str]:
    path: Path = args.state_dir / "endpoints.json"
    if not path.exists():
        raise ConfigError(f"no stack to benchmark: start one with `sluice dev` (writes {path})")
    data = json.loads(path.read_text())
    return str(data["ingress_url"]), str(data["api_key"]), str(data["postgres_dsn"])


def _body(model: str) -> Callable[[int], bytes]:
    def make(index: int) -> bytes:
        return orjson.dumps({
            "model": model,
            "messages": [{"role": "user", "content": f"Queued prompt number {index}."}],
            "max_tokens": 16,
        })

    return make


async def _measure(args: argparse.Namespace) -> dict[str, object]:
    url, key, dsn = _stack(args)
    model = args.model or "gpt-4o-mini"
    connection = await asyncpg.connect(dsn)
    try:
        since = datetime.now(UTC)
        started = time.perf_counter()
        with console.status(f"submitting {args.requests:,} prompts, c={args.concurrency}…"):
            load = await run_load(f"{url}/v1/requests", key, _body(model),
                                  total=args.requests, concurrency=args.concurrency)
        accepted = load.statuses.get(202, 0)
        final = 0
        with console.status("waiting for the ledger to record every answer…") as status:
            deadline = time.perf_counter() + args.drain_timeout_s
            while final < accepted and time.perf_counter() < deadline:
                final = int(await connection.fetchval(_FINAL, since))
                status.update(f"ledger has {final:,} of {accepted:,} answers…")
                await asyncio.sleep(0.05)
        finished = time.perf_counter() - started
    finally:
        await connection.close()
    if final < accepted:
        console.print(f"[yellow]only {final} of {accepted} answers were recorded within "
                      f"{args.drain_timeout_s:g}s[/]; raise --drain-timeout-s")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "mode": "async",
        "model": model,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "accepted": accepted,
        "statuses": load.statuses,
        "accept_rps": round(accepted / load.elapsed_s, 1),
        "accept_p50_ms": round(percentile(load.latencies, 0.5) * 1000, 2),
        "accept_p99_ms": round(percentile(load.latencies, 0.99) * 1000, 2),
        "recorded": final,
        "end_to_end_prompts_per_s": round(final / finished, 1),
        "end_to_end_s": round(finished, 2),
    }


def run_async_bench(args: argparse.Namespace) -> int:
    """Submit, wait for the ledger, print the figures (and a JSON line for the record)."""
    summary = asyncio.run(_measure(args))
    console.print(f"accepted {summary['accepted']:,} of {summary['requests']:,} at "
                  f"{summary['accept_rps']} req/s (p50 {summary['accept_p50_ms']} ms); "
                  f"all recorded after {summary['end_to_end_s']} s: "
                  f"{summary['end_to_end_prompts_per_s']} prompts/s end to end")
    print(json.dumps(summary))
    console.print("Record the JSON line in docs/BENCHMARKS.md with the command that made it.")
    return 0 if summary["recorded"] == summary["accepted"] == summary["requests"] else 1
