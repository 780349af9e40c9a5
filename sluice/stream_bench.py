"""`sluice bench stream`: time to first token through sluicegate against the provider's own.

One run, two paths, the same streamed prompts alternated: straight to the provider
(the simulator `sluice dev` started) and through ingress, Kafka and a worker. The figure
that matters is the difference: what the queue adds before a user sees the first word.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from rich.console import Console

from broker.errors import ConfigError
from sluice.loadgen import percentile

console = Console()


def _stack(state_dir: Path) -> tuple[str, str, str]:
    path = state_dir / "endpoints.json"
    if not path.exists():
        raise ConfigError(f"no stack to benchmark: start one with `sluice dev` (writes {path})")
    data = json.loads(path.read_text())
    return str(data["ingress_url"]), str(data["api_key"]), str(data["mock_provider_url"])


async def _first_token_ms(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                          body: bytes) -> float:
    """Milliseconds until the first chunk carrying text; the stream is then read to its end."""
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", url, content=body, headers=headers) as response:
        if response.status_code != 200:
            raise ConfigError(f"{url} answered {response.status_code}: {await response.aread()!r}")
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line and \
                    '"content":""' not in line:
                first = (time.perf_counter() - started) * 1000
    if first is None:
        raise ConfigError(f"{url} streamed no text")
    return first


async def _measure(args: argparse.Namespace) -> dict[str, object]:
    ingress, key, provider = _stack(args.state_dir)
    model = args.model or "gpt-4o-mini"
    paths = {
        "provider": (f"{provider}/chat/completions", {"content-type": "application/json"}),
        "sluicegate": (f"{ingress}/v1/chat/completions",
                       {"content-type": "application/json", "authorization": f"Bearer {key}"}),
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        index = 0

        async def one(name: str, measured: bool) -> None:
            nonlocal index
            index += 1
            body = orjson.dumps({"model": model, "stream": True, "max_tokens": 32,
                                 "messages": [{"role": "user",
                                               "content": f"Stream prompt {index}."}]})
            url, headers = paths[name]
            elapsed = await _first_token_ms(client, url, headers, body)
            if measured:
                samples[name].append(elapsed)

        semaphore = asyncio.Semaphore(args.concurrency)

        async def bounded(name: str, measured: bool) -> None:
            async with semaphore:
                await one(name, measured)

        for name in paths:  # warm both paths (connections, the JVM, the worker)
            await asyncio.gather(*(bounded(name, False) for _ in range(args.warmup)))
        for name in [*paths] * args.rounds:  # alternated, so drift hits both alike
            await asyncio.gather(*(bounded(name, True)
                                   for _ in range(args.requests // args.rounds)))
    figures: dict[str, object] = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "model": model, "concurrency": args.concurrency, "requests": args.requests,
    }
    for name, values in samples.items():
        figures[f"{name}_ttft_p50_ms"] = round(percentile(values, 0.5), 2)
        figures[f"{name}_ttft_p95_ms"] = round(percentile(values, 0.95), 2)
    figures["added_p50_ms"] = round(
        float(figures["sluicegate_ttft_p50_ms"]) - float(figures["provider_ttft_p50_ms"]), 2)  # type: ignore[arg-type]
    return figures


def run_stream_bench(args: argparse.Namespace) -> int:
    """Measure and print time to first token on both paths."""
    console.print(f"streaming {args.requests} prompts on each path, {args.concurrency} at a "
                  "time, after a warm-up …")
    figures = asyncio.run(_measure(args))
    console.print(f"time to first token, p50: provider {figures['provider_ttft_p50_ms']} ms, "
                  f"through sluicegate {figures['sluicegate_ttft_p50_ms']} ms "
                  f"(+{figures['added_p50_ms']} ms)")
    print(orjson.dumps(figures).decode())
    console.print("Record the JSON line in docs/BENCHMARKS.md with the command that made it.")
    return 0
