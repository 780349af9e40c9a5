"""Every SLUICE_* variable means something, and the README's table names every one."""

from __future__ import annotations

import re
from pathlib import Path

from sluice.settings_check import known_variables, unknown_variables

README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_misspelt_variable_is_named_with_the_nearest_setting() -> None:
    messages = unknown_variables({
        "SLUICE_WORKER_CONCURENCY": "512",
        "SLUICE_KAFKA_BOOTSTRAP": "k:9092",  # known: nothing said
        "SLUICE_NONSENSE_THING": "1",
        "PATH": "/usr/bin",  # not ours
    })
    assert messages == [
        "SLUICE_NONSENSE_THING is not a sluicegate setting and is ignored; see the settings "
        "table in README.md",
        "SLUICE_WORKER_CONCURENCY is not a sluicegate setting and is ignored; did you mean "
        "SLUICE_WORKER_CONCURRENCY?",
    ]


def test_the_readme_settings_table_documents_every_variable() -> None:
    lines = README.read_text().splitlines()
    table = "\n".join(line for line in lines if line.startswith("| `SLUICE_"))
    documented = set(re.findall(r"`(SLUICE_[A-Z0-9_]+)`", table))
    missing = sorted(known_variables() - documented - {"SLUICE_TEST_KAFKA_ENGINES",
                                                        "SLUICE_BENCH_LOG"})
    assert missing == []
