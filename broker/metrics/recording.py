"""What the components call when something worth counting happens (see `instruments`).

Each function takes the facts as the caller already holds them (schema messages, names,
numbers) and turns them into bounded labels, so the instrumented code stays one line per
event and the label rules live here: which statuses and categories exist, when the tenant
is a label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from broker.metrics import instruments as m
from broker.metrics.settings import MetricsSettings
from schemas import InferenceResult, Lane, UsageEvent

DeadLetterReason = Literal["retries_exhausted", "unproven", "poison", "database_refused"]
"""Why a message was dead-lettered, in categories (the full reason is in the message)."""

_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

_settings = MetricsSettings.model_construct()  # the defaults until `configure` is called


def configure(settings: MetricsSettings) -> None:
    """Adopt the process's metrics settings (the composition root calls this at start)."""
    global _settings
    _settings = settings


def settings() -> MetricsSettings:
    """The process's metrics settings."""
    return _settings


def tenant_label(tenant: str) -> str:
    """The tenant as a label value: "" (no label) unless tenant labels are turned on."""
    return tenant if _settings.metrics_tenant_labels else ""


def exposition() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def observe_final(result: InferenceResult, lane: Lane, usage: Iterable[UsageEvent] = ()) -> None:
    """A worker published a request's final result (and the usage of its billed calls)."""
    status = result.status.value
    m.REQUESTS.labels(result.model, status, lane.value, tenant_label(result.tenant)).inc()
    elapsed = (result.finished_at - result.created_at).total_seconds()
    m.REQUEST_DURATION.labels(result.model, status, lane.value).observe(max(0.0, elapsed))
    for event in usage:
        tenant = tenant_label(event.tenant)
        m.TOKENS.labels(event.model, event.deployment, "input", tenant).inc(event.input_tokens)
        m.TOKENS.labels(event.model, event.deployment, "output", tenant).inc(event.output_tokens)


def observe_queue_wait(model: str, lane: Lane, accepted_at: datetime, started_at: datetime,
                       ) -> None:
    """A request's first provider call started (`started_at`) after its acceptance."""
    waited = (started_at - accepted_at).total_seconds()
    m.QUEUE_WAIT.labels(model, lane.value).observe(max(0.0, waited))


def observe_retry(model: str) -> None:
    """A delivery of a request of `model` was scheduled again (every deployment failed)."""
    m.RETRIES.labels(model).inc()


def observe_dead_letter(component: Literal["worker", "ledger"], reason: DeadLetterReason,
                        count: int = 1) -> None:
    """`count` messages went to the dead-letter topic."""
    if count:
        m.DEAD_LETTERS.labels(component, reason).inc(count)


def export_breaker(deployment: str, state: str) -> None:
    """A deployment's breaker is now in `state` (`closed`, `half_open`, `open`)."""
    m.BREAKER_STATE.labels(deployment).set(_BREAKER_STATES[state])


def export_budgets(snapshot: Mapping[str, Mapping[str, Any]]) -> None:
    """The budget gates' latest snapshot (`BudgetGates.last_snapshot`) as gauges.

    Per deployment, each limited dimension carries `limit` and `remaining`; a deployment
    whose snapshot failed or is unused has none and keeps its last values.
    """
    for deployment, state in snapshot.items():
        for dimension, values in state.items():
            if not isinstance(values, Mapping) or "limit" not in values:
                continue
            limit, remaining = float(values["limit"]), float(values["remaining"])
            m.BUDGET_REMAINING.labels(deployment, dimension).set(remaining)
            # Above 1 when the bucket is in debt (reserved past what it holds), which is
            # worth seeing, not clipping.
            used = 1.0 - remaining / limit if limit > 0 else 0.0
            m.BUDGET_UTILIZATION.labels(deployment, dimension).set(max(0.0, used))


def observe_ledger_row(kind: str, event_at: datetime | None, recorded_at: datetime) -> None:
    """The ledger wrote a row of `kind` for an event of `event_at` (None: no time known)."""
    m.LEDGER_ROWS.labels(kind).inc()
    if event_at is not None:
        lag = (recorded_at - event_at).total_seconds()
        m.LEDGER_LAG.labels(kind).observe(max(0.0, lag))


def observe_spend(model: str, deployment: str, tenant: str, cost_usd: Decimal | None) -> None:
    """The ledger recorded a call priced at `cost_usd` (None: no price known, not counted)."""
    if cost_usd is not None and cost_usd > 0:
        m.SPEND.labels(model, deployment, tenant_label(tenant)).inc(float(cost_usd))


def observe_webhook_attempt(verdict: str, status_code: int | None, *, refused: bool) -> None:
    """One webhook attempt ended with `verdict` (succeeded, retry, failed, disable)."""
    if refused:
        status_class = "refused"
    elif status_code is None:
        status_class = "network"
    else:
        status_class = f"{status_code // 100}xx"
    m.WEBHOOK_ATTEMPTS.labels(verdict, status_class).inc()
