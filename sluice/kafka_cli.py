"""`sluice kafka fetch|start`: the production engine on a developer's machine, no Docker."""

from __future__ import annotations

import argparse
import signal
import threading

from broker.apache_kafka import KAFKA_VERSION, ApacheKafka, fetch_jars


def run_kafka_fetch(args: argparse.Namespace) -> int:
    """Fetch Apache Kafka's jars with Maven (once) and print where they are."""
    libs = fetch_jars(progress=print)
    print(f"Apache Kafka {KAFKA_VERSION} jars in {libs}; next: sluice kafka start")
    return 0


def run_kafka_start(args: argparse.Namespace) -> int:
    """Run Apache Kafka in the foreground until Ctrl-C."""
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped.set())
    print(f"starting Apache Kafka {KAFKA_VERSION}, {args.nodes} node(s)…", flush=True)
    with ApacheKafka(nodes=args.nodes, base_dir=args.state_dir, fast_start=False,
                     progress=print) as kafka:
        print(f"Apache Kafka is running at {kafka.bootstrap}\n"
              f"  next: SLUICE_KAFKA_BOOTSTRAP={kafka.bootstrap} sluice dev\n"
              "Press Ctrl-C to stop it.", flush=True)
        stopped.wait()
        print("stopping Apache Kafka…", flush=True)
    return 0
