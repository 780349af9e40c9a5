"""Prometheus metrics: the instruments (`instruments`), what components record
(`recording`), queue depth from Kafka (`queue_depth`) and the settings (`settings`).

Every process has one registry, prometheus_client's default: the operations port of
`sluice worker`, `ledger` and `deliver` and the ingress's `GET /metrics` render it
(`exposition`). README.md, section "Metrics", lists what is there.
"""

from broker.metrics.queue_depth import QueueDepth
from broker.metrics.recording import (
    DeadLetterReason,
    configure,
    export_breaker,
    export_budgets,
    exposition,
    observe_dead_letter,
    observe_final,
    observe_ledger_row,
    observe_queue_wait,
    observe_retry,
    observe_spend,
    observe_webhook_attempt,
    settings,
    tenant_label,
)
from broker.metrics.settings import MetricsSettings

__all__ = [
    "DeadLetterReason",
    "MetricsSettings",
    "QueueDepth",
    "configure",
    "export_breaker",
    "export_budgets",
    "exposition",
    "observe_dead_letter",
    "observe_final",
    "observe_ledger_row",
    "observe_queue_wait",
    "observe_retry",
    "observe_spend",
    "observe_webhook_attempt",
    "settings",
    "tenant_label",
]
