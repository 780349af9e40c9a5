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
    timestamp_column("started_at"),
    timestamp_column("finished_at"),
    timestamp_column("recorded_at", now=True),
    # Reports read usage_rollup (migration 0008); these serve the partial days at the ends
    # of a range, reconcile and per-request lookups. Each index costs every insert.
    Index(None, "tenant", "finished_at"),
    Index(None, "request_id"),
    Index(None, "finished_at"),
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
