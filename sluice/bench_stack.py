"""The stack the budget benches start: embedded Kafka and PostgreSQL, the simulator
enforcing a rate limit, one worker with that budget, and a publisher with its replies.

`sluice bench lanes` and `sluice bench fairness` measure on it; only what they send differs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from broker.embedded import EmbeddedPostgres, free_port, wait_for_port
from broker.settings import KafkaSettings
from broker.stores.database import upgrade_database
from ingress.publisher import RequestPublisher
from ingress.replies import ReplyListener
from sluice.budget_bench import MODEL, _spawn, _worker_env
from sluice.embedded_kafka import embedded_kafka


@dataclass
class BudgetedStack:
    """What a bench drives: publish requests, await their replies, read provider stats."""

    publisher: RequestPublisher
    replies: ReplyListener
    stats_url: str


@asynccontextmanager
async def budgeted_worker(kafka: KafkaSettings, database_url: str, workdir: Path, *,
                          rpm: int, window_s: float, name: str) -> AsyncIterator[BudgetedStack]:
    """The simulator (20 ms an answer, `rpm` per `window_s`) and one worker with that
    budget; the worker has joined when this yields."""
    port = free_port()
    simulator = _spawn(["mock-provider", "--port", str(port), "--latency-ms", "20",
                        "--rpm", str(rpm), "--tpm", "10000000", "--window-s", str(window_s)])
    config = workdir / f"{name}-config.yaml"
    config.write_text(yaml.safe_dump({
        "models": {MODEL: {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                                "model": MODEL, "rpm": rpm, "tpm": 10_000_000,
                                "window_s": window_s}},
    }))
    worker = None
    publisher, replies = RequestPublisher(kafka), ReplyListener(kafka, f"{name}{os.getpid()}")
    try:
        wait_for_port("127.0.0.1", port, 30, simulator, "mock-provider")
        worker = _spawn(["worker"], _worker_env(kafka, database_url, config))
        await replies.start()
        await publisher.start()
        await replies.wait_ready(30)
        yield BudgetedStack(publisher, replies, f"http://127.0.0.1:{port}")
    finally:
        await publisher.stop()
        await replies.stop()
        for process in (worker, simulator):
            if process is not None:
                process.terminate()
                process.wait(20)


Measure = Callable[[KafkaSettings, str, Path], Coroutine[Any, Any, dict[str, Any]]]


def on_embedded_stack(args: argparse.Namespace, measure: Measure) -> dict[str, Any]:
    """Run `measure` with Kafka (`--kafka`) and PostgreSQL started for it, then stop them."""
    with embedded_kafka(args.kafka) as (bootstrap, engine), EmbeddedPostgres() as postgres, \
            tempfile.TemporaryDirectory() as workdir:
        url = postgres.url("sluice_bench")
        asyncio.run(upgrade_database(url))
        # The bench's own loopback cluster; it publishes unsigned requests.
        settings = KafkaSettings(kafka_bootstrap=bootstrap, kafka_engine=engine,
                                 kafka_trust_unsigned=True, topic_partitions=4,
                                 session_timeout_ms=6000, heartbeat_interval_ms=1000,
                                 fetch_max_wait_ms=5)
        return asyncio.run(measure(settings, url, Path(workdir)))
