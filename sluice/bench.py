"""`sluice bench sync`: drive a running stack over HTTP; throughput, latency and memory.

By default it targets the stack `sluice dev` started (read from `.sluice/endpoints.json`),
whose simulated provider answers with zero latency, so the figures measure sluicegate itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from broker.errors import ConfigError
from sluice.loadgen import LoadResult, percentile, run_load

console = Console()


def _endpoints(args: argparse.Namespace) -> tuple[str, str, dict[str, int]]:
    path = args.state_dir / "endpoints.json"
    data: dict[str, object] = {}
    if path.exists():
        data = json.loads(path.read_text())
    url = args.url or data.get("ingress_url")
    key = args.api_key or data.get("api_key")
    if not url or not key:
        raise ConfigError(
            f"no stack to benchmark: start one with `sluice dev` (writes {path}) "
            "or pass --url and --api-key"
        )
    pids = data.get("pids") if not args.url else {}
    return str(url), str(key), dict(pids) if isinstance(pids, dict) else {}


def _rss_mb(pid: int, field: str) -> float | None:
    """`VmRSS` (now) or `VmHWM` (peak) of a process, in MB, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _memory(pids: dict[str, int], field: str) -> dict[str, float]:
    wanted = {n: p for n, p in pids.items() if n == "ingress" or n == "ledger" or "worker" in n}
    return {n: mb for n, p in wanted.items() if (mb := _rss_mb(p, field)) is not None}


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User plus system CPU time each process has used so far, from /proc/<pid>/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return used


def _body(model: str) -> Callable[[int], bytes]:
    def make(index: int) -> bytes:
        return orjson.dumps({
            "model": model,
            "messages": [{"role": "user", "content": f"Benchmark prompt number {index}."}],
            "max_tokens": 16,
        })

    return make


async def _drive(
    url: str, key: str, model: str, args: argparse.Namespace, pids: dict[str, int]
) -> tuple[LoadResult, list[dict[str, float]], dict[str, float]]:
    endpoint = f"{url}/v1/chat/completions"
    if args.warmup:
        await run_load(endpoint, key, _body(model), total=args.warmup, concurrency=args.concurrency)
    # The load generator shares the cores too, so its own CPU is reported beside the rest.
    measured = {**pids, "bench": os.getpid()}
    cpu_before = _cpu_seconds(measured)
    # Resident memory of each process at every tenth of the run: it must stay flat.
    checkpoints: list[dict[str, float]] = [{"requests": 0, **_memory(pids, "VmRSS")}]
    every = max(1, args.requests // 10)
    done = 0

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task(f"c={args.concurrency}", total=args.requests)

        def advance(count: int) -> None:
            nonlocal done
            done += count
            progress.advance(task, count)
            if done % every == 0:
                resident = _memory(pids, "VmRSS")
                checkpoints.append({"requests": done, **resident})
                # Printed as they come, so a run stopped early still shows its memory.
                progress.console.print(f"{done:,} requests, resident MB: " + ", ".join(
                    f"{name} {mb:.0f}" for name, mb in resident.items()))

        result = await run_load(
            endpoint, key, _body(model), total=args.requests, concurrency=args.concurrency,
            on_progress=advance,
        )
    # CPU each process spent per measured request: where the two cores go, in one run.
    cpu_after = _cpu_seconds(measured)
    cpu_ms = {name: round(1000 * (cpu_after[name] - spent) / max(1, args.requests), 3)
              for name, spent in cpu_before.items() if name in cpu_after}
    return result, checkpoints, cpu_ms


def run_bench(args: argparse.Namespace) -> int:
    """`sluice bench sync`: run it and print a table (and a JSON line for the record)."""
    url, key, pids = _endpoints(args)
    model = args.model
    if model is None:
        listing = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        listing.raise_for_status()
        model = listing.json()["data"][0]["id"]
    try:
        result, checkpoints, cpu_ms = asyncio.run(_drive(url, key, model, args, pids))
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted.[/] The memory checkpoints above were measured; "
                      "run again with fewer --requests for a full report.")
        return 130
    if not result.latencies:
        raise ConfigError("no request completed; is the stack running? (sluice dev)")
    peak = _memory(pids, "VmHWM")
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "model": model,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "ok": result.ok,
        "statuses": result.statuses,
        "throughput_rps": round(result.ok / result.elapsed_s, 1),
        "p50_ms": round(percentile(result.latencies, 0.50) * 1000, 2),
        "p95_ms": round(percentile(result.latencies, 0.95) * 1000, 2),
        "p99_ms": round(percentile(result.latencies, 0.99) * 1000, 2),
        "peak_rss_mb": {n: round(v, 1) for n, v in peak.items()},
        "rss_mb_checkpoints": [{n: round(v, 1) for n, v in point.items()}
                               for point in checkpoints],
        "cpu_ms_per_request": cpu_ms,
    }
    table = Table(title=f"sluice bench — {model}, concurrency {args.concurrency}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in ("requests", "ok", "throughput_rps", "p50_ms", "p95_ms", "p99_ms"):
        table.add_row(name, str(summary[name]))
    for name, mb in peak.items():
        table.add_row(f"peak RSS {name} (MB)", f"{mb:.1f}")
    for name, ms in sorted(cpu_ms.items(), key=lambda item: -item[1]):
        table.add_row(f"CPU {name} (ms/request)", f"{ms:.3f}")
    console.print(table)
    print(json.dumps(summary))
    failed = args.requests - result.ok
    if failed:
        console.print(f"[yellow]{failed} requests did not get 200: {result.statuses}[/]")
    console.print("Record the JSON line in docs/BENCHMARKS.md with the command that made it.")
    return 0 if not failed else 1
