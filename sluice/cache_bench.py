"""`sluice bench cache`: latency of a cache miss, an exact hit and a semantic hit.

Starts embedded Kafka (`--kafka`) and PostgreSQL, the simulator (answering at once, so a
miss measures sluicegate's own path: ingress, Kafka, a worker, the reply), a worker, the
ledger and an ingress process, with one model whose exact and semantic cache are on. Then,
one request at a time through ingress over HTTP:

1. misses: distinct questions ("What is the capital city of Kenya?"), each answered by the
   provider and kept by the ledger;
2. exact hits: the same questions again;
3. semantic hits: a paraphrase of each ("Which city is the capital of Kenya?"), matched by
   meaning (all-MiniLM-L6-v2 in numpy, in a thread) against the kept questions.

Each figure is p50/p95 of the client's round trip; a response whose `x-sluice-cache` is
not the expected one is counted apart and left out of that path's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from rich.console import Console

from broker.caching.keys import exact_key
from broker.embedded import free_port, wait_for_port
from broker.errors import ConfigError
from broker.settings import DatabaseSettings, KafkaSettings
from broker.stores.database import create_engine
from broker.stores.keys import create_api_key
from broker.stores.response_cache import find_answer
from schemas import ChatCompletionRequest
from sluice.bench_stack import on_embedded_stack
from sluice.budget_bench import _spawn, _worker_env
from sluice.loadgen import percentile

console = Console()
MODEL = "cached-bench"
TENANT = "bench"
THRESHOLD = 0.85
COUNTRIES = (
    "France", "Germany", "Japan", "Brazil", "Kenya", "Canada", "India", "Norway", "Peru",
    "Egypt", "Spain", "Italy", "Mexico", "Chile", "Ghana", "Poland", "Sweden", "Turkey",
    "Vietnam", "Argentina", "Australia", "Austria", "Belgium", "Colombia", "Denmark",
    "Finland", "Greece", "Hungary", "Indonesia", "Ireland", "Morocco", "Nepal", "Nigeria",
    "Pakistan", "Portugal", "Romania", "Senegal", "Thailand", "Ukraine", "Uruguay",
)
# (question, paraphrase): the paraphrases score 0.95-0.97 against their question with this
# model and under 0.7 against the same question about another country.
TEMPLATES = (
    ("What is the capital city of {}?", "Which city is the capital of {}?"),
    ("What currency is used in {}?", "Which currency does {} use?"),
    ("What language do people speak in {}?", "Which language is spoken in {}?"),
)


def _questions(count: int) -> list[tuple[str, str]]:
    pairs = [(question.format(country), paraphrase.format(country))
             for question, paraphrase in TEMPLATES for country in COUNTRIES]
    if count > len(pairs):
        raise ConfigError(f"--requests at most {len(pairs)} (distinct questions available)")
    return pairs[:count]


def _body(text: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}


async def _timed(client: httpx.AsyncClient, text: str, expected: str,
                 samples: list[float], unexpected: list[str]) -> None:
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", content=orjson.dumps(_body(text)))
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise ConfigError(f"ingress answered {response.status_code}: {response.text}")
    outcome = response.headers.get("x-sluice-cache", "")
    if outcome == expected:
        samples.append(elapsed)
    else:
        unexpected.append(outcome)


async def _until_kept(database_url: str, questions: list[str], timeout_s: float = 60) -> None:
    """Wait until the ledger has kept the answer to every question."""
    engine = create_engine(DatabaseSettings(database_url=database_url))
    try:
        deadline = time.monotonic() + timeout_s
        for text in questions:
            key = exact_key(TENANT, ChatCompletionRequest.model_validate(_body(text)))
            while await find_answer(engine, TENANT, key) is None:
                if time.monotonic() > deadline:
                    raise ConfigError("the ledger did not keep the answers in time")
                await asyncio.sleep(0.1)
    finally:
        await engine.dispose()


async def _measure(kafka: KafkaSettings, database_url: str, workdir: Path,
                   args: argparse.Namespace) -> dict[str, Any]:
    engine = create_engine(DatabaseSettings(database_url=database_url))
    api_key, _ = await create_api_key(engine, TENANT)
    await engine.dispose()
    sim_port, ingress_port = free_port(), free_port()
    config = workdir / "cache-config.yaml"
    config.write_text(yaml.safe_dump({
        "models": {MODEL: {"deployments": ["sim"], "cache": {
            "ttl_s": 3600, "semantic": {"threshold": THRESHOLD}}}},
        "deployments": {"sim": {"provider": "openai", "model": "gpt-4o-mini",
                                "base_url": f"http://127.0.0.1:{sim_port}/v1"}},
    }))
    env = _worker_env(kafka, database_url, config)
    processes = [_spawn(["mock-provider", "--port", str(sim_port)])]
    try:
        wait_for_port("127.0.0.1", sim_port, 30, processes[0], "mock-provider")
        processes += [_spawn(["worker"], env), _spawn(["ledger"], env),
                      _spawn(["ingress", "--port", str(ingress_port)], env)]
        wait_for_port("127.0.0.1", ingress_port, 60, processes[-1], "ingress")
        pairs = _questions(args.requests)
        headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingress_port}",
                                     headers=headers, timeout=60) as client:
            for index in range(args.warmup):  # the worker's partitions, the model's load
                await _timed(client, f"Warm-up question number {index}.", "miss", [], [])
            samples: dict[str, list[float]] = {"miss": [], "hit": [], "semantic-hit": []}
            unexpected: dict[str, list[str]] = {name: [] for name in samples}
            for question, _ in pairs:
                await _timed(client, question, "miss", samples["miss"], unexpected["miss"])
            await _until_kept(database_url, [question for question, _ in pairs])
            for question, _ in pairs:
                await _timed(client, question, "hit", samples["hit"], unexpected["hit"])
            for _, paraphrase in pairs:
                await _timed(client, paraphrase, "semantic-hit", samples["semantic-hit"],
                             unexpected["semantic-hit"])
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(20)
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "engine": kafka.kafka_engine, "requests": len(pairs), "threshold": THRESHOLD,
    }
    for name, values in samples.items():
        label = name.replace("-", "_")
        figures[f"{label}_p50_ms"] = round(percentile(values, 0.5), 2) if values else None
        figures[f"{label}_p95_ms"] = round(percentile(values, 0.95), 2) if values else None
        figures[f"{label}_count"] = len(values)
        if unexpected[name]:
            figures[f"{label}_unexpected"] = len(unexpected[name])
    return figures


def run_cache_bench(args: argparse.Namespace) -> int:
    """Measure and print miss, exact-hit and semantic-hit latency through ingress."""
    console.print(f"{args.requests} distinct questions, one at a time: misses, then exact "
                  "hits, then paraphrases (semantic hits) …")

    async def measure(kafka: KafkaSettings, database_url: str, workdir: Path) -> dict[str, Any]:
        return await _measure(kafka, database_url, workdir, args)

    figures = on_embedded_stack(args, measure)
    console.print(f"p50: miss {figures['miss_p50_ms']} ms, exact hit {figures['hit_p50_ms']} "
                  f"ms, semantic hit {figures['semantic_hit_p50_ms']} ms "
                  f"({figures['semantic_hit_count']}/{figures['requests']} paraphrases hit)")
    print(orjson.dumps(figures).decode())
    console.print("Record the JSON line in docs/BENCHMARKS.md with the command that made it.")
    return 0
