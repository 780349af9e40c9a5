"""`sluice bench guardrails`: what screening costs a request.

Two figures. In process: the time to screen a prompt and its answer (PII masking and
restoring, injection scoring, output rules), per policy and per kind of prompt, with no
I/O, so it is the worker's added CPU per request. End to end (unless `--no-stack`): one
worker on embedded Kafka and PostgreSQL with the simulator, the same prompt sent to a model
without policies and to one with all three kinds, one at a time, each timed from publish
to reply; the difference of the p50s is what a caller waits longer.
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

import yaml

from broker.embedded import free_port, wait_for_port
from broker.guardrails import GuardrailPolicy, Guardrails
from broker.settings import KafkaSettings
from ingress.publisher import RequestPublisher
from ingress.replies import ReplyListener
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest
from sluice.bench_stack import on_embedded_stack
from sluice.budget_bench import _spawn, _worker_env
from sluice.loadgen import percentile

_TICKET = ("Customer Jane Doe (jane.doe@example.com, +44 20 7946 0958) says her card "
           "4111 1111 1111 1111 was charged twice; refund to IBAN DE89 3704 0044 0532 0130 00. "
           "She logged in from 192.168.10.24. Draft a short, polite reply confirming the refund.")
_PROSE = ("The quarterly report covers revenue, churn and the new onboarding flow. Teams "
          "should read the attached notes before the review and bring questions. ")
PROMPTS = {
    "short": "What is the capital of France? Answer in one word.",
    "ticket": _TICKET,
    "long_8k": (_PROSE * 56)[:7600] + " Contact: ops@example.com. " + _TICKET,
}
ANSWER = ("Dear <EMAIL_1>, thank you for reaching out. We have refunded the duplicate charge "
          "to the account ending <IBAN_1>; it should arrive within three working days. "
          "Reference TCK-20931. Kind regards, the support team.")
POLICIES: dict[str, dict[str, Any]] = {
    "pii": {"pii": {"mode": "mask", "restore": True}},
    "injection": {"injection": {"mode": "flag"}},
    "output": {"output": {"mode": "redact", "patterns": {"ticket": r"TCK-\d+"},
                          "deny": ["project nightingale", "internal only"]}},
}
SETS = {"pii": ["pii"], "injection": ["injection"], "output": ["output"],
        "all": ["pii", "injection", "output"]}
MODEL_PLAIN, MODEL_GUARDED = "bench-plain", "bench-guarded"


def measure_in_process(iterations: int) -> dict[str, dict[str, float]]:
    """Microseconds per request (screen the prompt, then the answer) by prompt and policy."""
    guardrails = Guardrails({n: GuardrailPolicy.model_validate(p) for n, p in POLICIES.items()})
    figures: dict[str, dict[str, float]] = {}
    for prompt_name, prompt in PROMPTS.items():
        body = ChatCompletionRequest(model="m", messages=[
            ChatMessage(role="system", content="You are a helpful support assistant."),
            ChatMessage(role="user", content=prompt)])
        for set_name, names in SETS.items():
            times = []
            for _ in range(iterations):
                started = time.perf_counter()
                screening = guardrails.screen(body, names)
                screening.screen_answer(ANSWER)
                times.append((time.perf_counter() - started) * 1e6)
            times = times[len(times) // 10:]  # the first tenth warms caches
            figures[f"{prompt_name}/{set_name}"] = {
                "p50_us": round(percentile(times, 0.5), 1),
                "p99_us": round(percentile(times, 0.99), 1),
                "mean_us": round(sum(times) / len(times), 1)}
    return figures


async def measure_end_to_end(kafka: KafkaSettings, database_url: str, workdir: Path, *,
                             count: int) -> dict[str, Any]:
    """p50/p95 of publish → reply, per model, sent alternately one at a time."""
    port = free_port()
    simulator = _spawn(["mock-provider", "--port", str(port)])
    config = workdir / "guardrails-config.yaml"
    deployment = {"provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                  "model": "gpt-4o-mini"}
    config.write_text(yaml.safe_dump({
        "models": {MODEL_PLAIN: {"deployments": ["sim"]},
                   MODEL_GUARDED: {"deployments": ["sim"], "guardrails": SETS["all"]}},
        "deployments": {"sim": deployment},
        "guardrails": POLICIES,
    }))
    worker = None
    publisher = RequestPublisher(kafka)
    replies = ReplyListener(kafka, f"guardrails{os.getpid()}")
    latencies: dict[str, list[float]] = {MODEL_PLAIN: [], MODEL_GUARDED: []}
    try:
        wait_for_port("127.0.0.1", port, 30, simulator, "mock-provider")
        worker = _spawn(["worker"], _worker_env(kafka, database_url, config))
        await replies.start()
        await publisher.start()
        await replies.wait_ready(30)
        for index in range(count * 2 + 40):  # the first 40 warm both paths
            model = MODEL_GUARDED if index % 2 else MODEL_PLAIN
            elapsed = await _round_trip(publisher, replies, model)
            if index >= 40:
                latencies[model].append(elapsed)
    finally:
        await publisher.stop()
        await replies.stop()
        for process in (worker, simulator):
            if process is not None:
                process.terminate()
                process.wait(20)
    figures: dict[str, Any] = {}
    for model, values in latencies.items():
        key = "guarded" if model == MODEL_GUARDED else "plain"
        figures[f"{key}_p50_ms"] = round(percentile(values, 0.5) * 1000, 2)
        figures[f"{key}_p95_ms"] = round(percentile(values, 0.95) * 1000, 2)
    figures["p50_overhead_ms"] = round(figures["guarded_p50_ms"] - figures["plain_p50_ms"], 2)
    figures["requests_per_model"] = count
    return figures


async def _round_trip(publisher: RequestPublisher, replies: ReplyListener, model: str) -> float:
    request_id = f"req_gr_{uuid.uuid4().hex[:16]}"
    body = ChatCompletionRequest(model=model, max_tokens=16, messages=[
        ChatMessage(role="user", content=_TICKET)])
    request = InferenceRequest(id=request_id, model=model, body=body,
                               created_at=datetime.now(UTC), reply_to=replies.topic,
                               correlation_id=request_id)
    answer = replies.expect(request_id)
    started = time.perf_counter()
    await publisher.publish(request)
    await asyncio.wait_for(answer, 60)
    return time.perf_counter() - started


def run_guardrails_bench(args: argparse.Namespace) -> int:
    """Print the figures and a JSON line for docs/BENCHMARKS.md."""
    figures: dict[str, Any] = {"in_process": measure_in_process(args.iterations)}
    for name, values in figures["in_process"].items():
        print(f"{name:22} p50 {values['p50_us']:8.1f} µs   p99 {values['p99_us']:8.1f} µs")
    if not args.no_stack:
        figures["end_to_end"] = on_embedded_stack(args, lambda kafka, url, workdir:
                                                  measure_end_to_end(kafka, url, workdir,
                                                                     count=args.requests))
        e2e = figures["end_to_end"]
        print(f"end to end p50: plain {e2e['plain_p50_ms']} ms, with pii+injection+output "
              f"{e2e['guarded_p50_ms']} ms (overhead {e2e['p50_overhead_ms']} ms)")
    figures["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    figures["machine"] = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    figures["engine"] = None if args.no_stack else args.kafka
    print(json.dumps(figures))
    return 0
