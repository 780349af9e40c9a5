"""`sluice bench fairness`: does one tenant's backlog make another tenant wait?

Embedded Kafka and PostgreSQL, the simulator, one worker and a small budget. Tenant B
sends synchronous requests at a steady pace on the idle stack, then again while tenant A
has `--flood` asynchronous requests queued on the same model's topic; each of B's is timed
from publish to its reply. Target: B's p95 under A's backlog within 2x of its idle p95,
with A still served at the budget's pace meanwhile (it gets all the capacity B leaves).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from broker.kafka import encode, ensure_topics, new_producer, topics_for
from broker.settings import KafkaSettings
from ingress.publisher import RequestPublisher
from ingress.replies import ReplyListener
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest, Lane
from sluice.bench_stack import budgeted_worker, on_embedded_stack
from sluice.budget_bench import MODEL
from sluice.loadgen import percentile


def _request(tenant: str, reply_to: str | None = None) -> InferenceRequest:
    request_id = f"req_{tenant}_{uuid.uuid4().hex[:12]}"
    body = ChatCompletionRequest(model=MODEL, max_tokens=16, messages=[
        ChatMessage(role="user", content=f"Fairness bench, tenant {tenant}.")])
    return InferenceRequest(id=request_id, model=MODEL, body=body, tenant=tenant,
                            created_at=datetime.now(UTC), reply_to=reply_to,
                            correlation_id=request_id)


async def _tenant_b(publisher: RequestPublisher, replies: ReplyListener, count: int,
                    per_second: float) -> list[float]:
    async def one() -> float:
        request = _request("b", reply_to=replies.topic)
        answer = replies.expect(request.id)
        started = time.perf_counter()
        await publisher.publish(request)
        await asyncio.wait_for(answer, 600)
        return time.perf_counter() - started

    calls = []
    for _ in range(count):
        calls.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / per_second)
    return list(await asyncio.gather(*calls))  # in the order they were sent


async def _flood(kafka: KafkaSettings, count: int) -> float:
    """Queue `count` of tenant A's requests (nobody waits on them); return the seconds."""
    topic = topics_for(kafka).requests(MODEL, Lane.INTERACTIVE)
    await ensure_topics(kafka, [topic])
    producer = new_producer(kafka, client_id="sluice-fairness-bench", linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = [await producer.send(topic, encode(request), key=request.id.encode())
                   for request in (_request("a") for _ in range(count))]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def measure_fairness(kafka: KafkaSettings, database_url: str, workdir: Path, *,
                           rpm: int, window_s: float, flood: int, count: int,
                           per_second: float) -> dict[str, Any]:
    """B's idle latency, then the same while A's backlog drains."""
    async with budgeted_worker(kafka, database_url, workdir, rpm=rpm, window_s=window_s,
                               name="fair") as stack:
        publisher, replies = stack.publisher, stack.replies
        await _tenant_b(publisher, replies, 5, per_second)  # the worker has joined
        idle = await _tenant_b(publisher, replies, count, per_second)
        async with httpx.AsyncClient(base_url=stack.stats_url) as stats:
            flood_s = await _flood(kafka, flood)
            print(f"tenant A queued {flood} requests in {flood_s:.1f} s; timing tenant B",
                  flush=True)
            before = (await stats.get("/stats")).json()
            started = time.perf_counter()
            loaded = await _tenant_b(publisher, replies, count, per_second)
            elapsed = time.perf_counter() - started
            after = (await stats.get("/stats")).json()
    served = after["succeeded"] - before["succeeded"]
    budget_per_s = rpm / window_s
    return {
        "budget_per_s": budget_per_s, "flood": flood, "flood_publish_s": round(flood_s, 1),
        "b_requests": count, "b_per_s": per_second,
        "idle_p50_ms": round(percentile(idle, 0.5) * 1000, 1),
        "idle_p95_ms": round(percentile(idle, 0.95) * 1000, 1),
        "loaded_p50_ms": round(percentile(loaded, 0.5) * 1000, 1),
        "loaded_p95_ms": round(percentile(loaded, 0.95) * 1000, 1),
        "p95_ratio": round(percentile(loaded, 0.95) / percentile(idle, 0.95), 2),
        "loaded_ms_in_order": [round(latency * 1000) for latency in loaded],
        "a_served_while_b_timed": served - count,
        "budget_used": round(served / (budget_per_s * elapsed), 3),
        "rate_limited_total": after["errors_by_status"].get("429", 0),
    }


def run_fairness_bench(args: argparse.Namespace) -> int:
    """Print the figures and a JSON line for docs/BENCHMARKS.md."""
    figures = on_embedded_stack(args, lambda kafka, url, workdir: measure_fairness(
        kafka, url, workdir, rpm=args.rpm, window_s=args.window_s, flood=args.flood,
        count=args.requests, per_second=args.rate))
    figures["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    figures["machine"] = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    figures["engine"] = args.kafka
    print(f"tenant B p95 idle {figures['idle_p95_ms']} ms, behind A's {figures['flood']} "
          f"{figures['loaded_p95_ms']} ms (x{figures['p95_ratio']}; target within x2); "
          f"A served meanwhile: {figures['a_served_while_b_timed']} "
          f"({figures['budget_used']:.0%} of the budget used)")
    print(json.dumps(figures))
    return 0 if figures["p95_ratio"] <= 2 else 1
