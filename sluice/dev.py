"""`sluice dev`: the whole stack on one machine, with nothing to install or configure.

Starts a Kafka broker and PostgreSQL (embedded, unless SLUICE_KAFKA_BOOTSTRAP /
SLUICE_DATABASE_URL point at running ones), migrates, creates a development API key, then
runs the simulated provider, worker pool(s), ledger and ingress as child processes, and
says "running" once the workers own their partitions. The broker is Tansu (no Java
needed) unless `--kafka apache` asks for Apache Kafka (Java 17+ and Maven; the jars are
fetched once). Ctrl-C stops every child, then the embedded services.

This is a composition root: the embedded-broker profile (Tansu's workarounds) is chosen
here and handed to the children as settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

from broker.apache_kafka import ApacheKafka
from broker.embedded import EmbeddedKafka, EmbeddedPostgres, free_port
from broker.errors import ConfigError
from broker.settings import DatabaseSettings
from broker.stores.database import create_engine, upgrade_database
from broker.stores.keys import create_api_key
from broker.telemetry.settings import OTLP_ENDPOINT_VARIABLES

# soft_wrap: commands printed for copy-paste must never be broken across lines.
console = Console(soft_wrap=True)
DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


@dataclass
class _Children:
    log_dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "sluice", *args],
                # Each process's spans under its own service name (`sluice-worker`, …).
                env={"OTEL_SERVICE_NAME": f"sluice-{args[0]}", **self.env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.processes[name] = process
        return process

    def first_exited(self) -> str | None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name
        return None

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait_http(url: str, child: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise ConfigError(f"{name} exited with code {child.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise ConfigError(f"{name} did not become healthy at {url} in 60s; see {log}")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _prepare_database(url: str) -> str:
    await upgrade_database(url)
    engine = create_engine(DatabaseSettings(database_url=url))
    try:
        secret, _ = await create_api_key(engine, "dev", "sluice dev")
    finally:
        await engine.dispose()
    return secret


def run_dev(args: argparse.Namespace) -> int:
    """Start everything, print how to use it, and wait for Ctrl-C."""
    state_dir: Path = args.state_dir.resolve()
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if not _port_free(args.port):
        raise ConfigError(f"port {args.port} is taken; pass --port to use another")
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("SLUICE_KAFKA_BOOTSTRAP")
        engine = os.environ.get("SLUICE_KAFKA_ENGINE", "apache") if bootstrap else args.kafka
        kafka_pid = None  # the embedded broker's, for `sluice bench` to measure
        if not bootstrap:
            bootstrap, kafka_pid = _start_kafka(stack, args.kafka, state_dir, log_dir)
        console.print(f"[green]✓[/] Kafka ({_ENGINE_NAMES.get(engine, engine)}) at {bootstrap}")
        database_url = os.environ.get("SLUICE_DATABASE_URL")
        with console.status("starting PostgreSQL…"):
            if not database_url:
                postgres = stack.enter_context(EmbeddedPostgres())
                database_url = postgres.url("sluice")
        with console.status("migrating and creating a development API key…"):
            api_key = asyncio.run(_prepare_database(database_url))
        console.print(f"[green]✓[/] PostgreSQL at {_libpq(database_url)}")

        mock_port = free_port()
        config_path = args.config or _write_demo_config(state_dir, mock_port)
        env = {
            **os.environ,
            "SLUICE_KAFKA_BOOTSTRAP": bootstrap,
            "SLUICE_DATABASE_URL": database_url,
            "SLUICE_CONFIG": str(config_path),
            "SLUICE_KAFKA_ENGINE": engine,
            "PYTHONUNBUFFERED": "1",
            # Ingress signs what it publishes and workers verify it (a key per run). The
            # loopback cluster is closed, so unsigned Kafka-native requests (`sluice
            # loadgen`, a quick script) are served as well.
            "SLUICE_KAFKA_SIGNING_KEY": os.environ.get(
                "SLUICE_KAFKA_SIGNING_KEY", secrets.token_hex(32)),
            # The console's operator views (queues, budgets, breakers, dead letters) and
            # the admin API want an admin key: one per run unless one is given.
            "SLUICE_ADMIN_KEY": os.environ.get(
                "SLUICE_ADMIN_KEY", f"sk-admin-{secrets.token_urlsafe(32)}"),
            "SLUICE_KAFKA_TRUST_UNSIGNED": os.environ.get("SLUICE_KAFKA_TRUST_UNSIGNED", "true"),
            # One machine, nothing to wait for: faster first joins on Tansu (it holds
            # JoinGroup for half the session timeout) and faster takeover after a crash.
            "SLUICE_SESSION_TIMEOUT_MS": os.environ.get("SLUICE_SESSION_TIMEOUT_MS", "6000"),
            # Local development: webhook receivers on this machine are admitted.
            "SLUICE_WEBHOOK_ALLOW_HOSTS": os.environ.get(
                "SLUICE_WEBHOOK_ALLOW_HOSTS", "localhost,127.0.0.1,::1"),
            # Logs for people and spans printed beside them (one JSON line each), unless
            # asked otherwise: production's defaults are JSON logs and no traces.
            "SLUICE_LOG_FORMAT": os.environ.get("SLUICE_LOG_FORMAT", "text"),
            "SLUICE_TRACES": os.environ.get("SLUICE_TRACES", _dev_traces(os.environ)),
            **(_tansu_profile(args.workers) if engine == "tansu" else {}),
        }
        children = _Children(log_dir, env)
        stack.callback(children.stop_all)
        with console.status("starting simulator, workers, ledger and ingress…"):
            mock = children.start("mock-provider", "mock-provider", "--port", str(mock_port),
                                   "--latency-ms", str(args.latency_ms))
            _wait_http(f"http://127.0.0.1:{mock_port}/health", mock, "mock-provider",
                       log_dir / "mock-provider.log")
            workers = {}
            for index in range(args.workers):
                status_port = free_port()
                name = f"worker-{index + 1}"
                workers[name] = (status_port, children.start(
                    name, "worker", "--status-port", str(status_port)))
            # Each process answers /livez, /readyz, /status and /metrics on its ops port.
            ops_ports = {"ledger": free_port(), "deliver": free_port()}
            children.start("ledger", "ledger", "--ops-port", str(ops_ports["ledger"]))
            # webhooks (loopback allowlisted above)
            children.start("deliver", "deliver", "--ops-port", str(ops_ports["deliver"]))
            ingress = children.start("ingress", "ingress", "--port", str(args.port))
            ingress_url = f"http://127.0.0.1:{args.port}"
            _wait_http(f"{ingress_url}/health", ingress, "ingress", log_dir / "ingress.log")
        with console.status("waiting for the workers to own their partitions…"):
            # Only then is a first request answered at once (it waited for the group join).
            for name, (status_port, worker) in workers.items():
                _wait_http(f"http://127.0.0.1:{status_port}/ready", worker, name,
                           log_dir / f"{name}.log")
        endpoints = {
            "ingress_url": ingress_url,
            "api_key": api_key,
            "kafka_bootstrap": bootstrap,
            "postgres_dsn": _libpq(database_url),
            "mock_provider_url": f"http://127.0.0.1:{mock_port}/v1",
            "config": str(config_path),
            "worker_status_urls": [f"http://127.0.0.1:{port}/status"
                                   for port, _ in workers.values()],
            "admin_key": env["SLUICE_ADMIN_KEY"],
            "console_url": f"{ingress_url}/console",
            "metrics_urls": [f"{ingress_url}/metrics",
                             *(f"http://127.0.0.1:{port}/metrics" for port, _ in workers.values()),
                             *(f"http://127.0.0.1:{port}/metrics" for port in ops_ports.values())],
            "pids": {
                **({"kafka": kafka_pid} if kafka_pid is not None else {}),
                **{name: process.pid for name, process in children.processes.items()},
            },
        }
        (state_dir / "endpoints.json").write_text(json.dumps(endpoints, indent=2) + "\n")
        _print_usage(endpoints, state_dir)
        return _wait_for_exit(children)
    return 0


_ENGINE_NAMES = {"tansu": "embedded Tansu", "apache": "Apache Kafka"}


def _start_kafka(
    stack: contextlib.ExitStack, engine: str, state_dir: Path, log_dir: Path
) -> tuple[str, int | None]:
    """Start the chosen embedded broker; its bootstrap address and process id."""
    if engine == "apache":
        shutil.rmtree(state_dir / "kafka", ignore_errors=True)  # fresh each time, like Tansu
        kafka = ApacheKafka(nodes=1, base_dir=state_dir / "kafka", fast_start=False,
                            progress=lambda line: console.print(f"  {line}"))
        with console.status("starting Apache Kafka (KRaft, one node)…"):
            stack.enter_context(kafka)
        return kafka.bootstrap, kafka.pid(1)
    with console.status("starting Kafka-protocol broker (Tansu)…"):
        tansu = stack.enter_context(EmbeddedKafka(log_path=log_dir / "kafka.log"))
    return tansu.bootstrap, tansu.pid


def _dev_traces(environ: Mapping[str, str]) -> str:
    """Spans to a collector when one is named, else to the children's logs."""
    collector = any(environ.get(name) for name in OTLP_ENDPOINT_VARIABLES)
    return "otlp" if collector else "console"


def _tansu_profile(workers: int) -> dict[str, str]:
    """Settings for the embedded Tansu broker's quirks; none of them apply to Apache Kafka."""
    return {
        # Tansu answers a fetch once it finds records but re-checks an empty one only
        # at half the remaining wait, so a record can sit for half the wait before it
        # is seen (Apache Kafka answers as soon as it arrives). Measured here:
        # 20 ms -> 19 ms p50 at concurrency 1; 5 ms -> 12.2-12.4 ms; 3 ms -> 10.3-10.6
        # ms; 2 ms no better than 3 and dearer in idle polls. Under load the wait
        # stretches anyway (SLUICE_BUSY_FETCH_MAX_WAIT_MS), so 64 callers see no change.
        "SLUICE_FETCH_MAX_WAIT_MS": os.environ.get("SLUICE_FETCH_MAX_WAIT_MS", "3"),
        # Every Tansu fetch that finds new records scans the partition's whole history,
        # so consumers nobody waits on (ledger, webhooks, batches) poll once a second:
        # the broker's CPU per request then grows half as fast as the topics fill.
        "SLUICE_BACKGROUND_FETCH_MAX_WAIT_MS": os.environ.get(
            "SLUICE_BACKGROUND_FETCH_MAX_WAIT_MS", "1000"),
        # The embedded broker lists a partition's whole history on every fetch that
        # finds records, so spreading each topic over 8 partitions multiplies its work
        # (measured: 0.65 -> 0.26 ms of broker CPU per request with one partition). A
        # worker runs many requests at once from one partition, so one partition per
        # worker process loses no parallelism (reply topics keep their own count, see
        # KafkaSettings).
        "SLUICE_TOPIC_PARTITIONS": os.environ.get("SLUICE_TOPIC_PARTITIONS", str(workers)),
    }


def _wait_for_exit(children: _Children) -> int:
    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stop["requested"]:
        crashed = children.first_exited()
        if crashed is not None:
            console.print(f"[red]✗[/] {crashed} exited; see {children.log_dir / crashed}.log. "
                          "Stopping everything.")
            return 1
        time.sleep(0.2)
    console.print("stopping… (every child gets SIGTERM, then the embedded services stop)")
    return 0


def _write_demo_config(state_dir: Path, mock_port: int) -> Path:
    text = DEMO_CONFIG.read_text().replace("{mock_url}", f"http://127.0.0.1:{mock_port}/v1")
    path = state_dir / "config.yaml"
    path.write_text(text)
    return path


def _libpq(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _print_usage(endpoints: Mapping[str, object], state_dir: Path) -> None:
    url, key = endpoints["ingress_url"], endpoints["api_key"]
    console.print(f"""
[bold green]sluicegate is running[/] — endpoints in {state_dir / 'endpoints.json'}

  ingress      {url}   (OpenAI-compatible: {url}/v1, Anthropic-compatible: {url}/v1/messages)
  API key      {key}
  console      {endpoints['console_url']}   (sign in with the API key, or the admin key
               {endpoints['admin_key']} for queues, budgets, breakers and dead letters)
  metrics      {url}/metrics (and each process's ops port: endpoints.json)
  traces       printed as JSON lines in each process's log (SLUICE_TRACES=otlp and
               OTEL_EXPORTER_OTLP_ENDPOINT send them to a collector instead)
  Kafka        {endpoints['kafka_bootstrap']}
  PostgreSQL   {endpoints['postgres_dsn']}
  logs         {state_dir / 'logs'}

[bold]Try it[/]
  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello!"}}]}}'

  OpenAI SDK:  OpenAI(base_url="{url}/v1", api_key="{key}")
  Claude SDK:  Anthropic(base_url="{url}", api_key="{key}")
  Ledger:      psql '{endpoints['postgres_dsn']}' -c 'select * from usage_events limit 5'
  Benchmark:   sluice bench sync --concurrency 64 --requests 5000
  Batches:     sluice batch submit prompts.jsonl --wait --output results.jsonl

Press Ctrl-C to stop everything.""")
