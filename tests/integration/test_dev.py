"""`sluice dev` as a newcomer runs it: one command, then the OpenAI SDK and psql work."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from openai import OpenAI

from broker.apache_kafka import missing_tools
from broker.embedded import free_port
from broker.kafka import partition_ids
from broker.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


async def _ledger_rows(dsn: str, request_id: str, timeout_s: float = 30) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        rows = 0
        deadline = time.monotonic() + timeout_s
        while not rows and time.monotonic() < deadline:
            rows = await connection.fetchval(
                "select count(*) from usage_events where request_id = $1", request_id)
            await asyncio.sleep(0.1)
        return int(rows)
    finally:
        await connection.close()


async def _partition_counts(bootstrap: str) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        settings = KafkaSettings(kafka_bootstrap=bootstrap)
        return {name: len(await partition_ids(settings, name))
                for name in await consumer.topics() if name.startswith("sluice.")}
    finally:
        await consumer.stop()


def _bench(state_dir: Path, env: dict[str, str], kind: str, *options: str) -> dict[str, Any]:
    bench = subprocess.run(
        [sys.executable, "-m", "sluice", "bench", kind, "--state-dir", str(state_dir),
         "--concurrency", "4", "--requests", "40", *options],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr
    if kind == "sync":
        assert "40 requests, resident MB: " in bench.stdout  # each tenth as it happens
    summary: dict[str, Any] = json.loads(
        next(line for line in bench.stdout.splitlines() if line.startswith("{")))
    return summary


@pytest.mark.parametrize("engine", ["tansu", "apache"])
def test_sluice_dev_runs_the_whole_stack_and_stops_cleanly(tmp_path: Path, engine: str) -> None:
    if engine == "apache" and missing_tools() and not os.environ.get("CI"):
        pytest.skip("`sluice dev --kafka apache` needs Java 17+ and Maven")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "sluice", "dev", "--port", str(port), "--kafka", engine,
         "--state-dir", str(tmp_path / "state")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    endpoints_file = tmp_path / "state" / "endpoints.json"
    try:
        deadline = time.monotonic() + 90
        while not endpoints_file.exists():
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "sluice dev did not write endpoints.json"
            time.sleep(0.2)
        endpoints = json.loads(endpoints_file.read_text())
        # Written just before "running" is printed: by then every worker owns its
        # partitions, so a first request is not left waiting for a group join.
        for status_url in endpoints["worker_status_urls"]:
            ready = httpx.get(status_url.replace("/status", "/ready"), timeout=5)
            assert ready.status_code == 200, ready.text
        assert endpoints["ingress_url"] == f"http://127.0.0.1:{port}"
        assert {"api_key", "kafka_bootstrap", "postgres_dsn"} <= set(endpoints)

        # Closed here: a pooled socket left to the garbage collector raises its
        # ResourceWarning inside whichever test happens to run next.
        with OpenAI(base_url=f"{endpoints['ingress_url']}/v1",
                    api_key=endpoints["api_key"]) as client:
            completion = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
            assert completion.choices[0].message.content
            models = {m.id for m in client.models.list().data}
            # Streamed over a real socket, chunk by chunk, with the usage it asked for.
            chunks = list(client.chat.completions.create(
                model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "Stream it."}]))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
            # The demo's embedding model: deterministic vectors, billed by input tokens.
            embedded = client.embeddings.create(model="text-embedding-3-small",
                                                input=["alpha", "beta", "alpha"])
            vectors = [item.embedding for item in embedded.data]
            assert [len(v) for v in vectors] == [1536] * 3 and vectors[0] == vectors[2]
            assert embedded.usage.prompt_tokens == 3
        assert models == {"gpt-4o-mini", "llama-3.1-8b", "text-embedding-3-small"}

        assert asyncio.run(_ledger_rows(endpoints["postgres_dsn"], completion.id)) == 1

        # What the run shows an operator: the console, metrics on every process (the
        # request just made counted on ingress), spans in the logs, JSON-free text logs.
        console_page = httpx.get(endpoints["console_url"], timeout=5)
        assert console_page.status_code == 200 and "<html" in console_page.text.lower()
        me = httpx.get(f"{endpoints['ingress_url']}/console/api/me", timeout=5,
                       headers={"Authorization": f"Bearer {endpoints['admin_key']}"})
        assert me.status_code == 200, me.text
        scraped = [httpx.get(url, timeout=5) for url in endpoints["metrics_urls"]]
        assert [r.status_code for r in scraped] == [200] * len(scraped)
        assert len(scraped) == 1 + len(endpoints["worker_status_urls"]) + 2
        assert "sluice_queue_depth_messages{" in scraped[0].text  # ingress measures it
        answered = [line for line in scraped[1].text.splitlines()  # worker-1 answered
                    if line.startswith("sluice_requests_total{")]
        assert any('model="gpt-4o-mini"' in line and 'status="succeeded"' in line
                   for line in answered), answered
        # Spans go to the processes' logs in batches (every few seconds).
        worker_log = tmp_path / "state" / "logs" / "worker-1.log"
        deadline = time.monotonic() + 20
        while '"name": "chat gpt-4o-mini"' not in worker_log.read_text():
            assert time.monotonic() < deadline, "no chat span in the worker's log"
            time.sleep(0.5)

        summary = _bench(tmp_path / "state", env, "sync", "--warmup", "0")
        assert summary["ok"] == 40
        assert {"bench", "kafka", "ingress", "worker-1", "ledger"} <= set(
            summary["cpu_ms_per_request"])
        streamed = _bench(tmp_path / "state", env, "stream", "--warmup", "2",
                          "--rounds", "2")
        assert streamed["sluicegate_ttft_p50_ms"] >= 0 and streamed["provider_ttft_p50_ms"] >= 0
        queued = _bench(tmp_path / "state", env, "async")
        assert queued["accepted"] == queued["recorded"] == 40, queued
        assert queued["end_to_end_prompts_per_s"] > 0
        # One worker process on the embedded Tansu broker: one partition per topic (see
        # dev.py), but for the reply topic, which keeps its own count (see KafkaSettings).
        # Apache Kafka keeps the defaults: 8 everywhere.
        counts = asyncio.run(_partition_counts(endpoints["kafka_bootstrap"]))
        replies = {name for name in counts if name.startswith("sluice.replies.")}
        assert len(replies) == 1 and "sluice.requests.gpt-4o-mini" in counts
        assert {name: n for name, n in counts.items() if name not in replies} == dict.fromkeys(
            set(counts) - replies, 1 if engine == "tansu" else 8)
        assert [counts[name] for name in replies] == [8]
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "sluicegate is running" in output
    assert "Press Ctrl-C to stop everything." in output
    for name, pid in endpoints["pids"].items():
        assert not _alive(pid), f"{name} (pid {pid}) still running after Ctrl-C"
