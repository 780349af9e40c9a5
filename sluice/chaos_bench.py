"""`sluice bench chaos`: the same load on a healthy and on a failing provider.

Drives the stack `sluice dev` started: one healthy run, then the simulator is told
(`PUT /faults`) to fail a share of calls with 429/5xx, the same load runs again, and the
faults are switched off. Reports the success rate, the latency the failures added, how
many provider calls each request took, and duplicate billed calls: usage rows in the
ledger beyond one per request, which must be zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table

from broker.errors import ConfigError
from sluice.loadgen import LoadResult, percentile, run_load

console = Console()


def _body(model: str, tag: str) -> Callable[[int], bytes]:
    def make(index: int) -> bytes:
        return json.dumps({
            "model": model, "max_tokens": 16,
            "messages": [{"role": "user", "content": f"Chaos {tag} prompt {index}."}],
        }).encode()

    return make


async def _duplicates(dsn: str, since: datetime) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        await asyncio.sleep(2)  # let the ledger record the run's last answers
        return int(await connection.fetchval(
            "select count(*) - count(distinct request_id) from usage_events "
            "where started_at >= $1", since))
    finally:
        await connection.close()


async def _run(args: argparse.Namespace, endpoints: dict[str, Any]) -> dict[str, Any]:
    url, key = endpoints["ingress_url"], endpoints["api_key"]
    simulator = httpx.AsyncClient(base_url=endpoints["mock_provider_url"].removesuffix("/v1"))
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        model = args.model or (await client.get("/v1/models")).json()["data"][0]["id"]
    endpoint = f"{url}/v1/chat/completions"
    runs: dict[str, LoadResult] = {}
    try:
        await simulator.put("/faults", json={})
        if args.warmup:  # a cold stack would make the healthy run the slow one
            await run_load(endpoint, key, _body(model, "warmup"), total=args.warmup,
                           concurrency=args.concurrency)
        runs["healthy"] = await run_load(endpoint, key, _body(model, "healthy"),
                                         total=args.requests, concurrency=args.concurrency)
        before = (await simulator.get("/stats")).json()
        chaos_started = datetime.now(UTC)
        switched = await simulator.put("/faults", json={"error_rate": args.error_rate})
        switched.raise_for_status()
        runs["chaos"] = await run_load(endpoint, key, _body(model, "chaos"),
                                       total=args.requests, concurrency=args.concurrency)
    finally:
        await simulator.put("/faults", json={})
        after = (await simulator.get("/stats")).json()
        await simulator.aclose()
    chaos = runs["chaos"]
    healthy = runs["healthy"]
    injected = sum(after.get("errors_by_status", {}).values()) - sum(
        before.get("errors_by_status", {}).values())
    return {
        "date": chaos_started.strftime("%Y-%m-%d"),
        "model": model, "requests": args.requests, "concurrency": args.concurrency,
        "error_rate": args.error_rate,
        "success_rate": round(chaos.ok / args.requests, 4),
        "statuses": chaos.statuses,
        "p50_ms": {name: round(percentile(run.latencies, 0.5) * 1000, 1)
                   for name, run in runs.items()},
        "p95_ms": {name: round(percentile(run.latencies, 0.95) * 1000, 1)
                   for name, run in runs.items()},
        "added_p50_ms": round((percentile(chaos.latencies, 0.5)
                               - percentile(healthy.latencies, 0.5)) * 1000, 1),
        "added_p95_ms": round((percentile(chaos.latencies, 0.95)
                               - percentile(healthy.latencies, 0.95)) * 1000, 1),
        "provider_calls": after["requests"] - before["requests"],
        "injected_failures": injected,
        "calls_per_request": round((after["requests"] - before["requests"]) / args.requests, 3),
        "duplicate_billed_calls": await _duplicates(endpoints["postgres_dsn"], chaos_started),
    }


def run_chaos_bench(args: argparse.Namespace) -> int:
    """Run both phases and print a table and a JSON line for docs/BENCHMARKS.md."""
    path = args.state_dir / "endpoints.json"
    if not path.exists():
        raise ConfigError(f"no stack to benchmark: start one with `sluice dev` (writes {path})")
    endpoints = json.loads(path.read_text())
    if "mock_provider_url" not in endpoints:
        raise ConfigError("chaos mode needs the simulated provider that `sluice dev` starts")
    with console.status(f"healthy run, then {args.error_rate:.0%} failures "
                        f"({args.requests} requests each)…"):
        summary = asyncio.run(_run(args, endpoints))
    table = Table(title=f"sluice bench chaos — {summary['model']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in ("success_rate", "added_p50_ms", "added_p95_ms", "calls_per_request",
                 "injected_failures",
                 "duplicate_billed_calls"):
        table.add_row(name, str(summary[name]))
    console.print(table)
    print(json.dumps(summary))
    console.print("Record the JSON line in docs/BENCHMARKS.md with the command that made it.")
    return 0 if summary["duplicate_billed_calls"] == 0 else 1
