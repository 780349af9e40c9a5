"""Every Prometheus metric of sluicegate, defined once, in the process's default registry.

Names follow Prometheus conventions (base units, `_total` on counters, `_seconds` on
durations). Where the OpenTelemetry GenAI semantic conventions name a measurement
(`gen_ai.client.operation.duration`, `gen_ai.client.operation.time_to_first_chunk`,
`gen_ai.client.token.usage`), it keeps that name as OpenTelemetry's Prometheus exporter
would write it (dots become underscores, the unit `s` becomes `_seconds`, the annotation
`{token}` is dropped) and its attributes become labels the same way
(`gen_ai.provider.name` → `gen_ai_provider_name`), with the semantic conventions' bucket
boundaries. So a dashboard written for any GenAI-instrumented client reads ours too.

Labels are bounded by the configuration, never by traffic: models, deployments, lanes,
statuses, topics and a few fixed categories. Request ids never become labels; the tenant
does only where an operator turned `SLUICE_METRICS_TENANT_LABELS` on (it is "" otherwise,
which Prometheus treats as no label), because tenants grow with customers.

`METRIC_NAMES` lists every name, so tests can check that the Grafana dashboard
(`deploy/grafana/sluicegate.json`) reads only metrics that exist.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# The semantic conventions' explicit bucket boundaries, for duration and token histograms.
_GEN_AI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12,
                            10.24, 20.48, 40.96, 81.92)
_GEN_AI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576,
                         4194304, 16777216, 67108864)
# From an interactive answer in a second to a batch line finishing within its 24 h window.
_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                    3600.0, 4 * 3600.0, 24 * 3600.0)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)

_GEN_AI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                  "deployment")

# Workers: requests and provider calls.
REQUESTS = Counter(
    "sluice_requests", "Requests that reached their final result, by model, status and lane.",
    ["model", "status", "lane", "tenant"])
REQUEST_DURATION = Histogram(
    "sluice_request_duration_seconds",
    "From acceptance (the request's created_at) to its final result.",
    ["model", "status", "lane"], buckets=_REQUEST_BUCKETS)
QUEUE_WAIT = Histogram(
    "sluice_queue_wait_seconds",
    "From acceptance to the start of the request's first provider call (queue and budget).",
    ["model", "lane"], buckets=_REQUEST_BUCKETS)
OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "GenAI operation duration: one provider call, answered or failed.",
    [*_GEN_AI_LABELS, "error_type"], buckets=_GEN_AI_DURATION_BUCKETS)
TIME_TO_FIRST_CHUNK = Histogram(
    "gen_ai_client_operation_time_to_first_chunk_seconds",
    "From a streamed provider call's start to its first chunk.",
    list(_GEN_AI_LABELS), buckets=_GEN_AI_DURATION_BUCKETS)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Input and output tokens of one provider call, as the provider reported them.",
    [*_GEN_AI_LABELS, "gen_ai_token_type"], buckets=_GEN_AI_TOKEN_BUCKETS)
TOKENS = Counter(
    "sluice_tokens", "Billed tokens by model, deployment and direction (input|output).",
    ["model", "deployment", "direction", "tenant"])
RETRIES = Counter(
    "sluice_retries", "Deliveries scheduled again after every deployment failed.", ["model"])
DEAD_LETTERS = Counter(
    "sluice_dead_letters",
    "Messages parked in the dead-letter topic, by component and reason category.",
    ["component", "reason"])
BREAKER_STATE = Gauge(
    "sluice_breaker_state",
    "Circuit breaker of each deployment in this process: 0 closed, 1 half-open, 2 open.",
    ["deployment"])
BUDGET_REMAINING = Gauge(
    "sluice_budget_remaining",
    "What a deployment's shared budget holds now, per dimension (requests, tokens, ...).",
    ["deployment", "dimension"])
BUDGET_UTILIZATION = Gauge(
    "sluice_budget_utilization_ratio",
    "Share of a deployment's budget in use now (1 - remaining / limit; above 1: in debt).",
    ["deployment", "dimension"])

# Queue depth, measured from Kafka (ingress, on scrape).
QUEUE_DEPTH = Gauge(
    "sluice_queue_depth_messages",
    "Requests on a model's topic not yet committed by its worker group (consumer lag).",
    ["model", "lane", "topic", "group"])

# The ledger.
SPEND = Counter(
    "sluice_spend_usd", "Cost of recorded provider calls, in US dollars, from the price catalog.",
    ["model", "deployment", "tenant"])
LEDGER_ROWS = Counter(
    "sluice_ledger_rows", "Rows the ledger wrote (usage events, requests, results).", ["kind"])
LEDGER_LAG = Histogram(
    "sluice_ledger_lag_seconds",
    "From an event's time (a call's or request's finish, a request's acceptance) to its "
    "recording in PostgreSQL.", ["kind"], buckets=_LAG_BUCKETS)

# The webhook deliverer.
WEBHOOK_ATTEMPTS = Counter(
    "sluice_webhook_attempts",
    "Webhook delivery attempts by verdict and HTTP status class (or network / refused).",
    ["outcome", "status_class"])

METRIC_NAMES: frozenset[str] = frozenset({
    "sluice_requests_total", "sluice_request_duration_seconds", "sluice_queue_wait_seconds",
    "gen_ai_client_operation_duration_seconds",
    "gen_ai_client_operation_time_to_first_chunk_seconds", "gen_ai_client_token_usage",
    "sluice_tokens_total", "sluice_retries_total", "sluice_dead_letters_total",
    "sluice_breaker_state", "sluice_budget_remaining", "sluice_budget_utilization_ratio",
    "sluice_queue_depth_messages", "sluice_spend_usd_total", "sluice_ledger_rows_total",
    "sluice_ledger_lag_seconds", "sluice_webhook_attempts_total",
})
"""The exposed name of every metric above (counters gain `_total` on the wire)."""
