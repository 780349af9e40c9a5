"""`sluice bench lanes`: does a saturating batch make interactive callers wait?

Embedded Kafka and PostgreSQL, the simulator, one worker and a small budget. Interactive
requests go out at a steady pace on the idle stack, then again while 5,000 batch lines
keep the budget saturated; each is timed from publish to its reply. Target: the p95 under
batch load within 2x of the idle p95, with the batch still being served.
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


def _request(tag: str, lane: Lane, reply_to: str | None = None) -> InferenceRequest:
    request_id = f"req_{tag}_{uuid.uuid4().hex[:12]}"
    body = ChatCompletionRequest(model=MODEL, max_tokens=16, messages=[
        ChatMessage(role="user", content=f"Lane bench {tag}.")])
    return InferenceRequest(id=request_id, model=MODEL, body=body, lane=lane,
                            created_at=datetime.now(UTC), reply_to=reply_to,
                            correlation_id=request_id)


async def _interactive(publisher: RequestPublisher, replies: ReplyListener, count: int,
                       per_second: float) -> list[float]:
    latencies: list[float] = []

    async def one(index: int) -> None:
        request = _request(f"i{index}", Lane.INTERACTIVE, reply_to=replies.topic)
        answer = replies.expect(request.id)
        started = time.perf_counter()
        await publisher.publish(request)
        await asyncio.wait_for(answer, 120)
        latencies.append(time.perf_counter() - started)

    calls = []
    for index in range(count):
        calls.append(asyncio.create_task(one(index)))
        await asyncio.sleep(1 / per_second)
    await asyncio.gather(*calls)
    return latencies


async def _flood_batch(kafka: KafkaSettings, lines: int) -> None:
    topic = topics_for(kafka).requests(MODEL, Lane.BATCH)
    await ensure_topics(kafka, [topic])
    producer = new_producer(kafka, client_id="sluice-lanes-bench", linger_ms=5)
    await producer.start()
    try:
        pending = [await producer.send(topic, encode(request), key=request.id.encode())
                   for request in (_request(f"b{n}", Lane.BATCH) for n in range(lines))]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def measure_lanes(kafka: KafkaSettings, database_url: str, workdir: Path, *,
                        rpm: int, window_s: float, lines: int, count: int,
                        per_second: float) -> dict[str, Any]:
    """Idle interactive latency, then the same under a saturating batch."""
    async with budgeted_worker(kafka, database_url, workdir, rpm=rpm, window_s=window_s,
                               name="lanes") as stack:
        publisher, replies = stack.publisher, stack.replies
        await _interactive(publisher, replies, 5, per_second)  # the worker has joined
        idle = await _interactive(publisher, replies, count, per_second)
        async with httpx.AsyncClient(base_url=stack.stats_url) as stats:
            await _flood_batch(kafka, lines)
            await asyncio.sleep(window_s)  # the batch now holds the budget
            before = (await stats.get("/stats")).json()
            loaded = await _interactive(publisher, replies, count, per_second)
            after = (await stats.get("/stats")).json()
    served = after["succeeded"] - before["succeeded"]
    return {
        "budget_rpm": rpm, "window_s": window_s, "batch_lines": lines,
        "interactive_requests": count, "interactive_per_s": per_second,
        "idle_p50_ms": round(percentile(idle, 0.5) * 1000, 1),
        "idle_p95_ms": round(percentile(idle, 0.95) * 1000, 1),
        "loaded_p50_ms": round(percentile(loaded, 0.5) * 1000, 1),
        "loaded_p95_ms": round(percentile(loaded, 0.95) * 1000, 1),
        "p95_ratio": round(percentile(loaded, 0.95) / percentile(idle, 0.95), 2),
        "served_while_loaded": served,
        "batch_served_while_loaded": served - count,
        "rate_limited_total": after["errors_by_status"].get("429", 0),
    }


def run_lanes_bench(args: argparse.Namespace) -> int:
    """Print the figures and a JSON line for docs/BENCHMARKS.md."""
    figures = on_embedded_stack(args, lambda kafka, url, workdir: measure_lanes(
        kafka, url, workdir, rpm=args.lanes_rpm, window_s=args.window_s,
        lines=args.batch_lines, count=args.requests, per_second=args.interactive_rate))
    figures["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    figures["machine"] = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    print(f"interactive p95 idle {figures['idle_p95_ms']} ms, under batch "
          f"{figures['loaded_p95_ms']} ms (x{figures['p95_ratio']}; target within x2); "
          f"batch lines served meanwhile: {figures['batch_served_while_loaded']}")
    print(json.dumps(figures))
    return 0 if figures["p95_ratio"] <= 2 else 1
