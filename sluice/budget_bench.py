"""`sluice bench budget`: three worker processes against a rate-limited simulator.

Starts a simulated provider enforcing `provider_rpm`/`provider_tpm` over a sliding window
and `workers` separate `sluice worker` processes sharing one PostgreSQL budget of
`rpm`/`tpm`, queues `offered` times the budget straight onto Kafka, and reports what the
provider saw: utilisation (served ÷ the provider's limit over the measured windows) and
429s. The integration tests run the same measurement on the session's Kafka and Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from broker.embedded import free_port, wait_for_port
from broker.kafka import encode, ensure_topics, new_producer, topics_for
from broker.settings import KafkaSettings
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest

MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class BudgetRun:
    """One measurement's parameters (limits are per `window_s`)."""

    rpm: int
    tpm: int
    provider_rpm: int
    provider_tpm: int
    window_s: float = 10.0
    workers: int = 3
    windows: float = 3.0
    offered: float = 3.0
    latency_ms: float = 20.0
    # Windows served before measuring: the target is steady state, and the first seconds
    # include workers joining the consumer group one by one (a rebalance pauses them all).
    warmup_windows: float = 0.0


def _spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = os.environ.get("SLUICE_BENCH_LOG")  # a file for the children's logs (debugging)
    if not log:
        return subprocess.Popen([sys.executable, "-m", "sluice", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "ab") as out:  # the child has its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "sluice", *args], env=env,
                                stdout=out, stderr=out)


def _worker_env(kafka: KafkaSettings, database_url: str, config: Path) -> dict[str, str]:
    return {**os.environ, **kafka.as_env(), "SLUICE_DATABASE_URL": database_url,
            "SLUICE_CONFIG": str(config)}


async def _publish(kafka: KafkaSettings, count: int, deadline_s: float) -> None:
    topics = topics_for(kafka)
    await ensure_topics(kafka, [topics.requests(MODEL)])
    producer = new_producer(kafka, client_id="sluice-budget-bench", linger_ms=5)
    await producer.start()
    try:
        now = datetime.now(UTC)
        pending = []
        for index in range(count):
            body = ChatCompletionRequest(model=MODEL, max_tokens=16, messages=[
                ChatMessage(role="user", content=f"Budget prompt number {index}.")])
            request = InferenceRequest(id=f"req_{uuid.uuid4().hex}", model=MODEL, body=body,
                                       created_at=now,
                                       deadline=now + timedelta(seconds=deadline_s))
            pending.append(await producer.send(topics.requests(MODEL), encode(request),
                                               key=request.id.encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def measure_budget(run: BudgetRun, kafka: KafkaSettings, database_url: str,
                         workdir: Path) -> dict[str, Any]:
    """Run one measurement; the figures as a JSON-ready dict."""
    port = free_port()
    simulator = _spawn(["mock-provider", "--port", str(port), "--latency-ms",
                        str(run.latency_ms), "--rpm", str(run.provider_rpm), "--tpm",
                        str(run.provider_tpm), "--window-s", str(run.window_s)])
    config = workdir / "budget-config.yaml"
    config.write_text(yaml.safe_dump({
        "models": {MODEL: {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                                "model": MODEL, "rpm": run.rpm, "tpm": run.tpm,
                                "window_s": run.window_s}},
    }))
    workers: list[subprocess.Popen[bytes]] = []
    stats_url = f"http://127.0.0.1:{port}/stats"
    try:
        wait_for_port("127.0.0.1", port, 30, simulator, "mock-provider")
        env = _worker_env(kafka, database_url, config)
        workers = [_spawn(["worker"], env) for _ in range(run.workers)]
        duration = (run.windows + run.warmup_windows) * run.window_s
        offered = int(run.offered * run.rpm * (duration / run.window_s + 1))
        await _publish(kafka, offered, deadline_s=duration + 60)
        async with httpx.AsyncClient(timeout=30) as client:
            async def served() -> dict[str, Any]:
                stats: dict[str, Any] = (await client.get(stats_url)).json()
                return stats

            started = time.monotonic()
            while (await served())["succeeded"] == 0:
                if time.monotonic() - started > 60:
                    raise TimeoutError("no request was served within 60 s")
                await asyncio.sleep(0.05)
            await asyncio.sleep(run.warmup_windows * run.window_s)
            first, t0 = await served(), time.monotonic()
            marks: list[tuple[float, dict[str, Any]]] = []
            for window in range(1, int(run.windows) + 1):
                await asyncio.sleep(max(0.0, t0 + window * run.window_s - time.monotonic()))
                marks.append((time.monotonic() - t0, await served()))
        last = marks[-1][1]
        served_n = last["succeeded"] - first["succeeded"]
        limit = min(run.rpm, run.provider_rpm) * len(marks)
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "workers": run.workers, "window_s": run.window_s,
            "budget_rpm": run.rpm, "budget_tpm": run.tpm,
            "provider_rpm": run.provider_rpm, "provider_tpm": run.provider_tpm,
            "offered": offered, "warmup_windows": run.warmup_windows, "windows": len(marks),
            "served": served_n,
            "utilisation": round(served_n / limit, 4),
            "rate_limited_total": last["errors_by_status"].get("429", 0),
            "served_per_window": [b[1]["succeeded"] - a[1]["succeeded"]
                                  for a, b in zip([(0.0, first), *marks], marks, strict=False)],
            "rate_limited_per_window": [
                b[1]["errors_by_status"].get("429", 0) - a[1]["errors_by_status"].get("429", 0)
                for a, b in zip([(0.0, first), *marks], marks, strict=False)],
        }
    finally:
        for process in [*workers, simulator]:
            process.terminate()
        for process in [*workers, simulator]:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def _pair(text: str) -> tuple[int, int]:
    requests, _, tokens = text.partition(":")
    return int(requests), int(tokens or 0)


def run_budget_bench(args: argparse.Namespace) -> int:
    """`sluice bench budget RPM:TPM`: embedded Kafka and PostgreSQL, print the figures."""
    import json
    import platform
    import tempfile

    from broker.embedded import EmbeddedPostgres
    from broker.stores.database import upgrade_database
    from sluice.embedded_kafka import embedded_kafka

    rpm, tpm = _pair(args.budget)
    provider_rpm, provider_tpm = _pair(args.provider_limit) if args.provider_limit else (rpm, tpm)
    run = BudgetRun(rpm=rpm, tpm=tpm, provider_rpm=provider_rpm, provider_tpm=provider_tpm,
                    window_s=args.window_s, workers=args.workers, windows=args.windows,
                    warmup_windows=args.warmup_windows)
    with embedded_kafka(args.kafka) as (bootstrap, engine), EmbeddedPostgres() as postgres, \
            tempfile.TemporaryDirectory() as workdir:
        url = postgres.url("sluice_bench")
        asyncio.run(upgrade_database(url))
        # The bench's own loopback cluster; its load generator publishes unsigned requests.
        settings = KafkaSettings(kafka_bootstrap=bootstrap, kafka_engine=engine,
                                 kafka_trust_unsigned=True,
                                 topic_partitions=4, session_timeout_ms=6000,
                                 heartbeat_interval_ms=1000)
        figures = asyncio.run(measure_budget(run, settings, url, Path(workdir)))
    figures["machine"] = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    print(f"utilisation (served / limit): {figures['utilisation']:.1%}, "
          f"429s: {figures['rate_limited_total']}")
    print(json.dumps(figures))
    return 0
