"""The `sluice` command line: one entry point for every process of the stack.

Settings are read from the environment here, once, and passed down as typed objects.
Each subcommand's implementation is imported lazily so `sluice --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from broker.errors import SluiceError
from sluice.access_cli import add_access_commands
from sluice.batch_cli import add_batch_commands
from sluice.bench_cli import add_bench_commands
from sluice.ledger_commands import add_ledger_commands
from sluice.settings_check import unknown_variables
from sluice.templates_cli import add_template_commands

Handler = Callable[[argparse.Namespace], int]


def _handler(module: str, function: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        import importlib

        target: Handler = getattr(importlib.import_module(module), function)
        return target(args)

    return run


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="model/deployment config file (YAML); default: $SLUICE_CONFIG",
    )


def _add_ops_port(parser: argparse.ArgumentParser) -> None:
    # One port per process serves every operations path; the other names are the ones
    # earlier releases and other tools use for the same port.
    parser.add_argument(
        "--ops-port", "--status-port", "--metrics-port", dest="ops_port", type=int,
        default=None, metavar="PORT",
        help="serve /livez, /readyz, /status and /metrics on this port "
             "(default: $SLUICE_OPS_PORT; none)")


def build_parser() -> argparse.ArgumentParser:
    """The full command tree (tests check compose.yaml's commands against it)."""
    parser = argparse.ArgumentParser(
        prog="sluice",
        description="sluicegate: a queued inference broker for LLM APIs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="run the whole stack locally, embedded")
    _add_config(dev)
    dev.add_argument("--state-dir", type=Path, default=Path(".sluice"))
    dev.add_argument("--port", type=int, default=8080, help="ingress port (default 8080)")
    dev.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    dev.add_argument("--latency-ms", type=float, default=0.0, help="simulated provider latency")
    dev.add_argument("--kafka", choices=["tansu", "apache"], default="tansu",
                     help="embedded broker: tansu (default, no Java) or apache (Apache "
                          "Kafka; needs Java 17+ and Maven)")
    dev.set_defaults(handler=_handler("sluice.dev", "run_dev"))

    ingress = commands.add_parser("ingress", help="run the OpenAI-compatible HTTP edge")
    _add_config(ingress)
    ingress.add_argument("--host", default=None)
    ingress.add_argument("--port", type=int, default=None)
    ingress.set_defaults(handler=_handler("sluice.processes", "run_ingress"))

    worker = commands.add_parser("worker", help="run an inference worker pool")
    _add_config(worker)
    worker.add_argument("--models", default=None, help="comma-separated models (default: all)")
    worker.add_argument("--concurrency", type=int, default=None)
    _add_ops_port(worker)
    worker.set_defaults(handler=_handler("sluice.processes", "run_worker"))

    ledger = commands.add_parser("ledger", help="record usage and results in PostgreSQL")
    _add_ops_port(ledger)
    ledger.set_defaults(handler=_handler("sluice.processes", "run_ledger"))

    deliver = commands.add_parser("deliver", help="send signed webhooks for final results")
    _add_ops_port(deliver)
    deliver.set_defaults(handler=_handler("sluice.processes", "run_deliver"))

    migrate = commands.add_parser("migrate", help="apply database migrations (Alembic)")
    migrate.set_defaults(handler=_handler("sluice.processes", "run_migrate"))

    mock = commands.add_parser("mock-provider", help="run the simulated OpenAI-compatible provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9000)
    mock.add_argument("--latency-ms", type=float, default=0.0)
    mock.add_argument("--jitter-ms", type=float, default=0.0)
    mock.add_argument("--output-tokens", type=int, default=16)
    mock.add_argument("--answer-bytes", type=int, default=None,
                      help="make every answer's text exactly this many bytes")
    mock.add_argument("--faults", default=None,
                      help='injected faults as JSON, e.g. \'{"error_rate": 0.2}\'')
    mock.add_argument("--rpm", type=int, default=0, help="requests per window (0: unlimited)")
    mock.add_argument("--tpm", type=int, default=0, help="tokens per window (0: unlimited)")
    mock.add_argument("--window-s", type=float, default=60.0, help="sliding window (seconds)")
    mock.set_defaults(handler=_handler("sluice.processes", "run_mock_provider"))

    add_bench_commands(commands, _handler)  # sluice bench sync|async|budget|chaos|lanes|ledger

    dead = commands.add_parser("dead-letters", help="inspect and replay the dead-letter topic")
    dead_commands = dead.add_subparsers(dest="dead_letters_command", required=True)
    dead_list = dead_commands.add_parser("list", help="print entries as JSON lines")
    dead_list.add_argument("--limit", type=int, default=None, help="only the newest N")
    dead_list.set_defaults(handler=_handler("sluice.deadletters", "run_dead_letters"))
    dead_replay = dead_commands.add_parser("replay", help="send entries back to their topics")
    dead_replay.add_argument("--id", action="append", help="PARTITION:OFFSET (repeatable)")
    dead_replay.add_argument("--all", action="store_true")
    dead_replay.set_defaults(handler=_handler("sluice.deadletters", "run_dead_letters"))

    schemas = commands.add_parser("schemas", help="the wire contract")
    schema_commands = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schema_commands.add_parser("export", help="write JSON Schema files")
    export.add_argument("directory", type=Path)
    export.set_defaults(handler=_handler("sluice.processes", "run_schemas_export"))

    kafka = commands.add_parser("kafka", help="Apache Kafka on this machine, from Maven jars")
    kafka_commands = kafka.add_subparsers(dest="kafka_command", required=True)
    fetch = kafka_commands.add_parser("fetch", help="fetch the broker's jars (once) and say where")
    fetch.set_defaults(handler=_handler("sluice.kafka_cli", "run_kafka_fetch"))
    start = kafka_commands.add_parser(
        "start", help="run Apache Kafka (KRaft) on free loopback ports until Ctrl-C")
    start.add_argument("--nodes", type=int, default=1,
                       help="1, or 3 for a cluster that survives losing a broker")
    start.add_argument("--state-dir", type=Path, default=None,
                       help="keep storage and logs here (default: a temporary folder)")
    start.set_defaults(handler=_handler("sluice.kafka_cli", "run_kafka_start"))

    config = commands.add_parser("config", help="configuration files")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_handler("sluice.processes", "run_config_check"))

    add_ledger_commands(commands, ledger, _handler)  # keys, prices, usage, ledger reconcile
    add_batch_commands(commands, _handler)  # sluice batch submit|status|cancel|list
    add_access_commands(commands, _handler)  # sluice access request|approve|deny|list
    add_template_commands(commands, _handler)  # sluice templates create|list|show
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sluice` console script."""
    args = build_parser().parse_args(argv)
    for problem in unknown_variables(os.environ):
        print(f"sluice: warning: {problem}", file=sys.stderr)
    try:
        return int(args.handler(args))
    except SluiceError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a setting read from the environment is invalid
        problems = "; ".join(str(error["msg"]).removeprefix("Value error, ")
                             for error in exc.errors())
        print(f"sluice: error: invalid setting: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
