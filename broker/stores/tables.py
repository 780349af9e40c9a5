"""The PostgreSQL schema as SQLAlchemy Core tables: ledger, requests, keys, prices, tenants.

Migrations in `migrations/versions` are written by hand and must match these definitions;
`tests/integration/test_database.py` compares the two. Money is `numeric` (never float) and
every timestamp is `timestamptz`, so analysts can sum cost exactly and compare times across
zones.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

# Stable constraint names, so later migrations can refer to them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

REQUEST_STATUSES = ("queued", "succeeded", "failed", "expired", "cancelled")


def timestamp_column(name: str, *, nullable: bool = False, now: bool = False) -> Column[object]:
    """A `timestamptz` column, optionally defaulting to the database's `now()`."""
    return Column(
        name,
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if now else None,
    )


usage_events = Table(
    "usage_events",
    metadata,
    # Assigned once per provider call by the worker: a redelivered event is the same row.
    Column("event_id", Text, primary_key=True),
    Column("request_id", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("api_key_id", Text, nullable=True),
    Column("model", Text, nullable=False),
    Column("deployment", Text, nullable=False),
    Column("provider", Text, nullable=False),
    # The provider's own id, for reconciling our ledger against its invoice.
    Column("provider_request_id", Text, nullable=True),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    # Of input_tokens, how many the provider served from its prompt cache (cheaper price).
    Column("cached_input_tokens", Integer, nullable=False, server_default="0"),
    # Of output_tokens, how many a reasoning model spent thinking (billed as output).
    Column("reasoning_output_tokens", Integer, nullable=False, server_default="0"),
    # Of input_tokens, how many were written to the provider's prompt cache (Anthropic).
    Column("cache_write_input_tokens", Integer, nullable=False, server_default="0"),
    # Of those, how many went to Anthropic's one-hour cache (a higher price).
    Column("cache_write_1h_input_tokens", Integer, nullable=False, server_default="0"),
    # `batch`: made through the provider's own batch API, charged its batch price.
    Column("service_tier", Text, nullable=False, server_default="standard"),
    Column("cost_usd", Numeric(20, 10), nullable=True),
    Column("latency_ms", Double, nullable=False),
    Column("status", Text, nullable=False),
    # The `prices` row the ledger charged with (None: config fallback or unknown price).
    Column("price_id", BigInteger, nullable=True),
    # The routing variant of the call's request (A/B name, `canary`, `stable`, `shadow`; 0017).
    Column("variant", Text, nullable=True),
    # Answered from the response cache (`hit`, `semantic-hit`; migration 0015): provider
    # `cache`, zero tokens and cost; the saved_* columns hold what the original call used.
    Column("cache", Text, nullable=True),
    Column("saved_input_tokens", Integer, nullable=False, server_default="0"),
    Column("saved_output_tokens", Integer, nullable=False, server_default="0"),
    timestamp_column("started_at"),
    timestamp_column("finished_at"),
    timestamp_column("recorded_at", now=True),
    # Reports read usage_rollup (migration 0008); these serve the partial days at the ends
    # of a range, reconcile and per-request lookups. Each index costs every insert.
    Index(None, "tenant", "finished_at"),
    Index(None, "request_id"),
    Index(None, "finished_at"),
    CheckConstraint("cache IN ('hit', 'semantic-hit')", name="cache"),
)

# Rows of `requests` that still hold text: a prompt, or a completion's message content.
# The ledger's retention sweep removes it for tenants without `store_content`; its partial
# index (migration 0007) holds only these rows, and the sweep must use this exact predicate
# for PostgreSQL to match the index.
REQUEST_HAS_TEXT = (
    "prompt IS NOT NULL OR result @? '$.completion.choices[*].message.content'"
)

requests = Table(
    "requests",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("api_key_id", Text, nullable=True),
    Column("model", Text, nullable=False),
    # Null only while the result has been recorded but the request itself not yet seen.
    Column("lane", Text, nullable=True),
    Column("status", Text, nullable=False),
    Column("result", JSONB, nullable=True),
    Column("error", JSONB, nullable=True),
    # The request's messages: kept only for tenants with `store_content` (privacy).
    Column("prompt", JSONB, nullable=True),
    # Routing (0017): the alias asked for (`model` is the model that served it), the
    # variant assigned, and on a shadow copy the id of the request it mirrors.
    Column("requested_model", Text, nullable=True),
    Column("variant", Text, nullable=True),
    Column("shadow_of", Text, nullable=True),
    # Prompt templates (0018): the template and version the request was rendered from.
    Column("template", Text, nullable=True),
    Column("template_version", Integer, nullable=True),
    timestamp_column("created_at"),
    timestamp_column("finished_at", nullable=True),
    timestamp_column("updated_at", now=True),
    CheckConstraint(
        "status IN ('queued', 'succeeded', 'failed', 'expired', 'cancelled')", name="status"
    ),
    Index(None, "tenant", "created_at"),
    Index("ix_requests_text_updated_at", "updated_at", postgresql_where=text(REQUEST_HAS_TEXT)),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("name", Text, nullable=True),
    # First characters of the secret, shown to humans to tell keys apart.
    Column("prefix", Text, nullable=False),
    # sha256 hex of the full secret; the secret itself is never stored.
    Column("key_hash", Text, nullable=False, unique=True),
    timestamp_column("created_at", now=True),
    timestamp_column("revoked_at", nullable=True),
    timestamp_column("last_used_at", nullable=True),
    # Limits of this key; None means "no limit of this kind".
    Column("models", ARRAY(Text), nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("monthly_budget_usd", Numeric(20, 10), nullable=True),
    timestamp_column("expires_at", nullable=True),
    Column("monthly_budget_tokens", BigInteger, nullable=True),
    # Guardrail policies this key adds to its models' own (0016; README "Guardrails").
    Column("guardrails", ARRAY(Text), nullable=True),
    # Identity (0020; README "Identity and roles"): what the key may do, and the CIDRs it
    # may (allow) or may not (deny) be used from; null lists check nothing.
    Column("role", Text, nullable=False, server_default="member"),
    Column("ip_allow", ARRAY(Text), nullable=True),
    Column("ip_deny", ARRAY(Text), nullable=True),
    CheckConstraint("role IN ('admin', 'tenant_admin', 'member', 'analyst')", name="role"),
    Index(None, "tenant"),
)

prices = Table(
    "prices",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("model", Text, nullable=False),
    # None: the model's price on every deployment without a price of its own.
    Column("deployment", Text, nullable=True),
    Column("input_usd_per_mtok", Numeric(20, 10), nullable=False),
    Column("output_usd_per_mtok", Numeric(20, 10), nullable=False),
    Column("cached_input_usd_per_mtok", Numeric(20, 10), nullable=True),
    Column("cache_write_input_usd_per_mtok", Numeric(20, 10), nullable=True),
    Column("cache_write_1h_input_usd_per_mtok", Numeric(20, 10), nullable=True),
    Column("batch_input_usd_per_mtok", Numeric(20, 10), nullable=True),
    Column("batch_output_usd_per_mtok", Numeric(20, 10), nullable=True),
    Column("currency", Text, nullable=False, server_default="USD"),
    timestamp_column("effective_from"),
    timestamp_column("created_at", now=True),
    # NULLS NOT DISTINCT (PostgreSQL 15+): one model-wide price per model and date, too.
    UniqueConstraint(
        "model", "deployment", "effective_from", postgresql_nulls_not_distinct=True
    ),
    CheckConstraint("currency = 'USD'", name="currency"),
)

tenants = Table(
    "tenants",
    metadata,
    Column("name", Text, primary_key=True),
    # Privacy: completion text stays in `requests.result` only when the tenant opts in.
    Column("store_content", Boolean, nullable=False, server_default="false"),
    Column("monthly_budget_usd", Numeric(20, 10), nullable=True),
    timestamp_column("created_at", now=True),
    Column("monthly_budget_tokens", BigInteger, nullable=True),
    # Fair share: how many of its requests may be accepted and unfinished at once (0011).
    Column("max_queued_requests", BigInteger, nullable=True),
    # Fair share: the tenant's share relative to others (workers' turns and slots).
    Column("weight", Double, nullable=False, server_default="1"),
    # Identity (0020): CIDRs the tenant's keys and tokens may (not) be used from.
    Column("ip_allow", ARRAY(Text), nullable=True),
    Column("ip_deny", ARRAY(Text), nullable=True),
    CheckConstraint("weight > 0", name="weight"),
)

# Budgets (migration 0006 holds the SQL functions that change these three tables).
# scope: `tenant:<name>` or `key:<id>`; period: the first day of the month (UTC).
spend_accounts = Table(
    "spend_accounts",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("period", Date, primary_key=True),
    # Recorded usage (the ledger adds it with the usage rows: a rollup of usage_events).
    Column("spent_usd", Numeric(20, 10), nullable=False, server_default="0"),
    Column("spent_tokens", BigInteger, nullable=False, server_default="0"),
    # Estimates of admitted requests not finished yet (the sum of their spend_holds).
    Column("reserved_usd", Numeric(20, 10), nullable=False, server_default="0"),
    Column("reserved_tokens", BigInteger, nullable=False, server_default="0"),
    timestamp_column("updated_at", now=True),
)

spend_holds = Table(
    "spend_holds",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("period", Date, nullable=False),
    Column("usd", Numeric(20, 10), nullable=False),
    Column("tokens", BigInteger, nullable=False),
    timestamp_column("created_at", now=True),
    # The tenant whose queue the request counts in (None: not counted).
    Column("queued_tenant", Text, nullable=True),
    Index(None, "created_at"),
)

# A sliding-window counter per rate-limited key (seconds since the epoch, database clock).
key_rate_windows = Table(
    "key_rate_windows",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("window_start", Double, nullable=False),
    Column("requests", Double, nullable=False, server_default="0"),
    Column("tokens", Double, nullable=False, server_default="0"),
    Column("prev_requests", Double, nullable=False, server_default="0"),
    Column("prev_tokens", Double, nullable=False, server_default="0"),
)

# Requests of a tenant accepted and not finished, counted only for tenants with a
# `max_queued_requests` (migration 0011 holds the SQL that keeps it).
tenant_queues = Table(
    "tenant_queues",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("queued", BigInteger, nullable=False, server_default="0"),
)

# Requests a worker moved to their model's batch topic for fair share (migration 0011):
# a worker given the original again skips it. Rows older than a day are swept.
moved_requests = Table(
    "moved_requests",
    metadata,
    Column("request_id", Text, primary_key=True),
    timestamp_column("moved_at", now=True),
    Index(None, "moved_at"),
)

# Daily usage totals, kept by a trigger on `usage_events` (migration 0008): the usage
# reports and the `usage_daily` / `spend_by_tenant_month` views read these instead of
# aggregating millions of rows. Days are UTC; `requests` counts each request once, in the
# cell of its first call; `cost_usd` sums the priced calls only.
usage_rollup = Table(
    "usage_rollup",
    metadata,
    Column("day", Date, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("api_key_id", Text, nullable=True),
    Column("model", Text, nullable=False),
    Column("deployment", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("calls", BigInteger, nullable=False, server_default="0"),
    Column("requests", BigInteger, nullable=False, server_default="0"),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cached_input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cost_usd", Numeric(30, 10), nullable=False, server_default="0"),
    Column("unpriced_calls", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint(
        "day", "tenant", "api_key_id", "model", "deployment", "provider",
        name="uq_usage_rollup_cell", postgresql_nulls_not_distinct=True,
    ),
)

# One row per running worker process, rewritten every few seconds (migration 0014): its
# models, breaker states, requests in flight and readiness, for the console. Breakers live
# in each worker's memory; this is how another process (ingress) gets to see them. A row
# whose `beat_at` is old belongs to a worker that stopped or hangs.
worker_heartbeats = Table(
    "worker_heartbeats",
    metadata,
    Column("worker_id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("models", ARRAY(Text), nullable=False),
    Column("state", JSONB, nullable=False),
    timestamp_column("started_at"),
    timestamp_column("beat_at", now=True),
)

# Answers kept for identical or similar requests (migration 0015, `broker.caching`): one
# row per exact cache key, written by the ledger, read by ingress through an in-process LRU.
# `rest_hash` and `embedding` (384 float32, L2-normalised) only for semantic-cache models.
response_cache = Table(
    "response_cache",
    metadata,
    Column("key", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("rest_hash", Text, nullable=True),
    Column("embedding", LargeBinary, nullable=True),
    Column("completion", JSONB, nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    timestamp_column("created_at", now=True),
    timestamp_column("expires_at"),
    Index(None, "tenant", "model", "rest_hash"),
    Index(None, "expires_at"),
)

# One row per guardrail decision (migration 0016, `broker.guardrails`): which policy's rule
# did what to a request, and how many matches. Never the matched text: PII stays out of the
# database. Written by the ledger from `InferenceResult.guardrails`; a redelivered result is
# the same rows (the unique decision).
guardrail_events = Table(
    "guardrail_events",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("request_id", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("policy", Text, nullable=False),
    Column("rule", Text, nullable=False),
    # masked | blocked | logged | flagged | redacted | restored
    Column("action", Text, nullable=False),
    # input (the prompt, before the call) | output (the answer)
    Column("stage", Text, nullable=False),
    Column("count", Integer, nullable=False, server_default="1"),
    timestamp_column("at", now=True),
    UniqueConstraint("request_id", "policy", "rule", "action", "stage",
                     name="uq_guardrail_events_decision"),
    Index(None, "tenant", "at"),
)

# Access approval (migration 0019, `broker.stores.access`): one row per request to use a
# model or template that requires approval (`resource` is `model:<name>` or
# `template:<name>`), for a whole tenant (`key_id` '') or one key. `status` is pending,
# approved or denied.
access_grants = Table(
    "access_grants",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("key_id", Text, nullable=False, server_default=""),
    Column("resource", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("requested_by", Text, nullable=False),
    Column("decided_by", Text, nullable=True),
    timestamp_column("created_at", now=True),
    timestamp_column("decided_at", nullable=True),
    UniqueConstraint("tenant", "key_id", "resource", name="uq_access_grants_scope"),
)

# Every access request and decision, append-only (a trigger refuses UPDATE and DELETE):
# who (`admin` or a tenant key id), what, when and why.
access_audit = Table(
    "access_audit",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("grant_id", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("resource", Text, nullable=False),
    # requested | approved | denied
    Column("action", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    timestamp_column("at", now=True),
    Index(None, "grant_id"),
)

# Versioned prompt templates (migration 0018, `broker.templates`): one row per (name,
# version); a version is never updated, a change is the next version.
prompt_templates = Table(
    "prompt_templates",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("messages", JSONB, nullable=False),
    Column("parameters", JSONB, nullable=False),
    Column("variables", JSONB, nullable=False),
    Column("description", Text, nullable=True),
    timestamp_column("created_at", now=True),
    Column("requires_approval", Boolean, nullable=False, server_default="false"),
    CheckConstraint("version >= 1", name="version"),
)

# Feedback on answers (migrations 0022 and 0024, `broker.feedback.store`): one row per
# (request, caller): a caller's new post replaces its earlier one. `comment` is content:
# kept only for tenants with `store_content`. Model, deployment and variant come from
# `requests` and `usage_events` at report time (the `feedback_by_variant` view), so
# feedback may arrive before the ledger.
feedback = Table(
    "feedback",
    metadata,
    Column("id", Text, primary_key=True),
    Column("request_id", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("api_key_id", Text, nullable=True),
    # Set when the feedback was given to a batch line by its custom id.
    Column("batch_id", Text, nullable=True),
    Column("custom_id", Text, nullable=True),
    Column("score", Double, nullable=False),
    Column("label", Text, nullable=True),
    Column("comment", Text, nullable=True),
    timestamp_column("created_at", now=True),
    CheckConstraint("score >= -1 AND score <= 1", name="score"),
    UniqueConstraint("request_id", "api_key_id"),
    Index(None, "request_id"),
    Index(None, "tenant", "created_at"),
)

# Budget alerts (migration 0021, `broker.stores.budget_alerts`): a trigger on
# `spend_accounts` fires each (scope, threshold, period, budget amount) once into the webhook
# outbox; daily spend is added by the ledger's `sluice_usage_add` (migration 0024).
budget_alert_rules = Table(
    "budget_alert_rules",
    metadata,
    Column("scope", Text, primary_key=True),  # tenant:<name> or key:<id>
    Column("tenant", Text, nullable=False),
    Column("thresholds_pct", ARRAY(Integer), nullable=False, server_default="{}"),
    Column("daily_usd", Numeric(20, 10), nullable=True),
    timestamp_column("updated_at", now=True),
    Index(None, "tenant"),
)

budget_alerts_fired = Table(
    "budget_alerts_fired",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("scope", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("threshold", Text, nullable=False),  # "50%" or "daily"
    Column("period", Date, nullable=False),  # a month's first day, or the day
    Column("spend_usd", Numeric(20, 10), nullable=False),
    Column("budget_usd", Numeric(20, 10), nullable=False),
    timestamp_column("fired_at", now=True),
    UniqueConstraint("scope", "threshold", "period", "budget_usd"),
    Index(None, "tenant", "fired_at"),
)

budget_daily_spend = Table(
    "budget_daily_spend",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("spent_usd", Numeric(20, 10), nullable=False, server_default="0"),
)
