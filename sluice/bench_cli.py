"""`sluice bench sync|async|stream|budget|chaos|lanes|fairness|ledger`: one subcommand each.

Each prints a human summary, then one JSON line to record in docs/BENCHMARKS.md with the
command that made it. `sync`, `async` and `chaos` drive a running stack (by default the
one `sluice dev` started); `budget`, `lanes`, `fairness` and `ledger` start what they need.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]
MakeHandler = Callable[[str, str], Handler]


def _stack_options(parser: argparse.ArgumentParser, *, url: bool = True) -> None:
    parser.add_argument("--state-dir", type=Path, default=Path(".sluice"),
                        help="where `sluice dev` wrote endpoints.json (default .sluice)")
    if url:
        parser.add_argument("--url", default=None, help="ingress URL (default: from sluice dev)")
        parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="default: the first model listed")


def _load_options(parser: argparse.ArgumentParser, requests: int, warmup: int | None) -> None:
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=requests)
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup,
                            help="requests sent before measuring (a JVM broker wants many)")


def _kafka_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kafka", choices=["apache", "tansu"], default="apache",
                        help="the broker it starts (default Apache Kafka; Tansu where Java "
                             "is missing)")


def add_bench_commands(commands: Any, handler: MakeHandler) -> None:
    """Add `sluice bench` and its subcommands to the CLI."""
    bench = commands.add_parser("bench", help="measure speed (sync, async, budget, chaos, "
                                              "lanes, fairness, ledger)")
    kinds = bench.add_subparsers(dest="bench_command", required=True, metavar="KIND")

    sync = kinds.add_parser("sync", help="synchronous chat completions: throughput, latency, "
                                         "memory and CPU per process")
    _stack_options(sync)
    _load_options(sync, requests=5000, warmup=200)
    sync.set_defaults(handler=handler("sluice.bench", "run_bench"))

    queued = kinds.add_parser("async", help="POST /v1/requests as fast as accepted, then "
                                            "prompts/s until the ledger has every answer")
    _stack_options(queued, url=False)
    _load_options(queued, requests=20000, warmup=None)
    queued.add_argument("--drain-timeout-s", type=float, default=600.0,
                        help="how long to wait for the ledger")
    queued.set_defaults(handler=handler("sluice.async_bench", "run_async_bench"))

    budget = kinds.add_parser("budget", help="worker processes share a provider budget "
                                             "against a rate-limited simulator")
    budget.add_argument("budget", metavar="RPM:TPM", help="the budget per window")
    budget.add_argument("--provider-limit", default=None, metavar="RPM:TPM",
                        help="the simulator's real limit (default: the budget)")
    budget.add_argument("--window-s", type=float, default=10.0)
    budget.add_argument("--windows", type=float, default=3.0)
    budget.add_argument("--warmup-windows", type=float, default=1.0,
                        help="windows served before measuring (steady state)")
    budget.add_argument("--workers", type=int, default=3)
    _kafka_option(budget)
    budget.set_defaults(handler=handler("sluice.budget_bench", "run_budget_bench"))

    chaos = kinds.add_parser("chaos", help="a healthy run, then one with --error-rate of "
                                           "provider calls failing; success, latency, duplicates")
    _stack_options(chaos, url=False)
    _load_options(chaos, requests=5000, warmup=200)
    chaos.add_argument("--error-rate", type=float, default=0.2)
    chaos.set_defaults(handler=handler("sluice.chaos_bench", "run_chaos_bench"))

    lanes = kinds.add_parser("lanes", help="interactive latency idle, then while batch lines "
                                           "saturate the budget")
    lanes.add_argument("--lanes-rpm", type=int, default=150, help="budget per --window-s")
    lanes.add_argument("--window-s", type=float, default=10.0)
    lanes.add_argument("--batch-lines", type=int, default=5000)
    lanes.add_argument("--requests", type=int, default=200, help="interactive requests")
    lanes.add_argument("--interactive-rate", type=float, default=5.0,
                       help="interactive requests per second")
    _kafka_option(lanes)
    lanes.set_defaults(handler=handler("sluice.lanes_bench", "run_lanes_bench"))

    fairness = kinds.add_parser("fairness", help="one tenant's synchronous latency idle, then "
                                                 "behind another tenant's backlog")
    fairness.add_argument("--rpm", type=int, default=20, help="budget per --window-s")
    fairness.add_argument("--window-s", type=float, default=1.0)
    fairness.add_argument("--flood", type=int, default=20000,
                          help="tenant A's queued asynchronous requests")
    fairness.add_argument("--requests", type=int, default=30, help="tenant B's requests")
    fairness.add_argument("--rate", type=float, default=1.0,
                          help="tenant B's requests per second")
    _kafka_option(fairness)
    fairness.set_defaults(handler=handler("sluice.fairness_bench", "run_fairness_bench"))

    stream = kinds.add_parser("stream", help="time to first token of streamed answers: "
                                             "through sluicegate against the provider's own")
    _stack_options(stream, url=False)
    _load_options(stream, requests=400, warmup=50)
    stream.add_argument("--rounds", type=int, default=4,
                        help="the paths alternate this many times")
    stream.set_defaults(handler=handler("sluice.stream_bench", "run_stream_bench"))

    ledger = kinds.add_parser("ledger", help="ledger write throughput and usage query latency "
                                             "in PostgreSQL")
    ledger.add_argument("--database-url", default=None,
                        help="a server to create a throwaway database on (default: "
                             "$SLUICE_DATABASE_URL, else an embedded PostgreSQL)")
    ledger.add_argument("--rows", type=int, default=10_000_000, help="usage rows")
    ledger.add_argument("--days", type=float, default=90.0, help="the rows span this")
    ledger.add_argument("--events", type=int, default=200_000,
                        help="events written through the ledger")
    ledger.add_argument("--batch-size", type=int, default=2000, help="events per write_batch")
    ledger.add_argument("--writers", type=int, default=2,
                        help="ledger instances writing at once (each owns a share of the "
                             "tenants, as of the usage partitions)")
    ledger.set_defaults(handler=handler("sluice.ledger_bench", "run_ledger_bench"))

    cache = kinds.add_parser("cache", help="response cache: miss, exact-hit and semantic-hit "
                                           "latency through ingress")
    cache.add_argument("--requests", type=int, default=120,
                       help="distinct questions (each asked, repeated, then paraphrased)")
    cache.add_argument("--warmup", type=int, default=20, help="misses sent before measuring")
    _kafka_option(cache)
    cache.set_defaults(handler=handler("sluice.cache_bench", "run_cache_bench"))

    guardrails = kinds.add_parser("guardrails", help="guardrail overhead per request: "
                                                     "in process, and end to end p50")
    guardrails.add_argument("--iterations", type=int, default=2000,
                            help="screenings per prompt and policy (in process)")
    guardrails.add_argument("--requests", type=int, default=300,
                            help="round trips per model (end to end)")
    guardrails.add_argument("--no-stack", action="store_true",
                            help="only the in-process figures (no Kafka, no worker)")
    _kafka_option(guardrails)
    guardrails.set_defaults(handler=handler("sluice.guardrails_bench", "run_guardrails_bench"))
