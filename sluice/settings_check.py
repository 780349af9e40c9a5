"""Every `SLUICE_*` variable of the environment must mean something.

All settings classes share the `SLUICE_` namespace and ignore what they do not know (a
process reads only its own classes), so a misspelt variable would otherwise be silently
ignored: `SLUICE_WORKER_CONCURENCY=512` would leave a worker at 128 slots. Each process
checks the whole environment against every class at start and names what no class reads.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from pydantic_settings import BaseSettings

from broker.batches.settings import BatchSettings
from broker.metrics.settings import MetricsSettings
from broker.settings import (
    AppSettings,
    DatabaseSettings,
    IngressSettings,
    KafkaSettings,
    LedgerSettings,
    WorkerSettings,
)
from broker.telemetry.settings import TelemetrySettings
from broker.webhooks.settings import WebhookSettings

SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    KafkaSettings, DatabaseSettings, IngressSettings, WorkerSettings, LedgerSettings,
    AppSettings, WebhookSettings, BatchSettings, TelemetrySettings, MetricsSettings,
)
# Read by the processes themselves, not by a settings class.
_OTHER_VARIABLES = frozenset({
    "SLUICE_URL",  # the batch CLI's ingress (sluice/batch_cli.py)
    "SLUICE_API_KEY",  # the batch CLI's key
    "SLUICE_BENCH_LOG",  # where `sluice bench budget` writes its children's logs
    "SLUICE_TEST_KAFKA_ENGINES",  # the test suite's engine choice
    "SLUICE_POSTGRES_PASSWORD",  # compose.yaml's database password
})
_PREFIX = "SLUICE_"


def known_variables() -> frozenset[str]:
    """Every `SLUICE_*` variable some settings class (or a command) reads."""
    names = {
        f"{cls.model_config.get('env_prefix', '')}{field}".upper()
        for cls in SETTINGS_CLASSES
        for field in cls.model_fields
    }
    return frozenset(names | _OTHER_VARIABLES)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per `SLUICE_*` variable nothing reads, with the nearest known name."""
    known = known_variables()
    messages = []
    for name in sorted(environ):
        if not name.startswith(_PREFIX) or name in known:
            continue
        nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = (f"; did you mean {nearest[0]}?" if nearest
                else "; see the settings table in README.md")
        messages.append(f"{name} is not a sluicegate setting and is ignored{hint}")
    return messages
