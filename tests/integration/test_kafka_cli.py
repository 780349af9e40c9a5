"""`sluice kafka start`: Apache Kafka for a developer, reachable, stopped by Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import pytest

from broker.apache_kafka import missing_tools
from broker.kafka import describe_brokers
from broker.settings import KafkaSettings

pytestmark = pytest.mark.integration


def test_sluice_kafka_start_runs_a_broker_until_ctrl_c() -> None:
    if missing_tools() and not os.environ.get("CI"):
        pytest.skip("`sluice kafka start` needs Java 17+ and Maven")
    process = subprocess.Popen([sys.executable, "-m", "sluice", "kafka", "start"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "is running at" in line:
                break
        found = re.search(r"running at (\S+)", "".join(lines))
        assert found, "".join(lines)
        facts = asyncio.run(describe_brokers(KafkaSettings(kafka_bootstrap=found[1])))
        assert facts.brokers == 1 and facts.message_max_bytes == 1_048_588
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "stopping Apache Kafka" in output
