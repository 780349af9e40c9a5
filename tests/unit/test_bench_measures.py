"""What `sluice bench` reads from /proc about the processes it measures."""

from __future__ import annotations

import os
import time

from sluice.bench import _cpu_seconds, _memory


def test_cpu_seconds_grow_with_work_and_skip_dead_processes() -> None:
    me = {"bench": os.getpid(), "gone": 2**22 + 12345}
    before = _cpu_seconds(me)
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    after = _cpu_seconds(me)
    assert set(before) == set(after) == {"bench"}
    assert after["bench"] - before["bench"] >= 0.03


def test_memory_reports_only_the_services_under_the_limit() -> None:
    measured = _memory({"ingress": os.getpid(), "kafka": os.getpid()}, "VmRSS")
    assert set(measured) == {"ingress"} and measured["ingress"] > 1
