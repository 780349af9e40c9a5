"""Usage rollup: daily totals per tenant, key, model, deployment and provider.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

Why: over 10 million usage rows (`sluice bench ledger`), the usage report of 30 days by
model and day took 20 s, the `usage_daily` view over 30 days 22 s and `spend_by_tenant_month`
for one month 5.8 s on the 2-core reference machine. No index helps: each has to aggregate
millions of rows. `usage_rollup` holds one row per UTC day and (tenant, key, model,
deployment, provider), about 2,000 a day there, so those answers read thousands of rows.

A statement-level trigger keeps it exact: every INSERT into `usage_events` (the ledger's,
or anyone's) adds its new rows to the rollup in the same transaction, so the two never
disagree and a redelivered event (not inserted) adds nothing. `usage_events` is append-only;
after deleting or correcting rows, `SELECT sluice_usage_rollup_rebuild()` recomputes it.

`requests` counts each request once, in the cell of its first call (earliest `finished_at`,
then `event_id`), so summing cells never counts a request twice; a call that arrives late
but finished earlier moves the request to its cell. (The `usage_daily` view used to count a
request in every day and deployment it had calls in.)

The views keep their names and columns and read the rollup. The rebuild below reads all of
`usage_events` once (36 s for 10 million rows on the reference machine).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CELL = "day, tenant, api_key_id, model, deployment, provider"
TOTALS = """
        calls = r.calls + excluded.calls,
        requests = r.requests + excluded.requests,
        input_tokens = r.input_tokens + excluded.input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens,
        cost_usd = r.cost_usd + excluded.cost_usd,
        unpriced_calls = r.unpriced_calls + excluded.unpriced_calls"""

# For each request with a new call: every call of it, ranked among all calls and among the
# old ones. A request's first call gets +1; an old first call that is first no longer gets
# -1. The calls are found by one index probe per request: OFFSET 0 keeps the planner from
# merging the probes into one scan of the table, and enable_seqscan off from probing by
# scan (PL/pgSQL keeps the plan it made while the table was small: 620 ms a batch at 40,000
# rows, where probes take 25 ms at 10 million).
ROLLUP_ADD = f"""
CREATE FUNCTION sluice_usage_rollup_add() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
BEGIN
    WITH calls AS (
        SELECT c.*, (a.event_id IS NOT NULL) AS is_new
        FROM (SELECT DISTINCT request_id FROM added) AS q
        CROSS JOIN LATERAL (
            SELECT e.event_id, e.request_id, e.finished_at, e.tenant, e.api_key_id, e.model,
                   e.deployment, e.provider
            FROM usage_events e WHERE e.request_id = q.request_id OFFSET 0) AS c
        LEFT JOIN added a ON a.event_id = c.event_id
    ), ranked AS (
        SELECT c.*,
               row_number() OVER (PARTITION BY request_id ORDER BY finished_at, event_id)
                   AS rank_all,
               row_number() OVER (PARTITION BY request_id, is_new ORDER BY finished_at, event_id)
                   AS rank_side
        FROM calls c
    ), cells AS (
        SELECT finished_at, tenant, api_key_id, model, deployment, provider,
               1 AS calls, 0 AS requests, input_tokens, output_tokens, cached_input_tokens,
               coalesce(cost_usd, 0) AS cost_usd, (cost_usd IS NULL)::int AS unpriced_calls
        FROM added
        UNION ALL
        SELECT finished_at, tenant, api_key_id, model, deployment, provider, 0,
               (rank_all = 1)::int - (NOT is_new AND rank_side = 1)::int, 0, 0, 0, 0, 0
        FROM ranked WHERE rank_all = 1 OR (NOT is_new AND rank_side = 1)
    )
    INSERT INTO usage_rollup AS r ({CELL}, calls, requests, input_tokens,
        output_tokens, cached_input_tokens, cost_usd, unpriced_calls)
    SELECT (date_trunc('day', finished_at AT TIME ZONE 'UTC'))::date AS day, tenant,
           api_key_id, model, deployment, provider, sum(calls), sum(requests),
           sum(input_tokens), sum(output_tokens), sum(cached_input_tokens), sum(cost_usd),
           sum(unpriced_calls)
    FROM cells
    GROUP BY 1, tenant, api_key_id, model, deployment, provider
    ORDER BY 1, tenant, api_key_id, model, deployment, provider  -- one lock order for all
    ON CONFLICT ({CELL}) DO UPDATE SET {TOTALS};
    RETURN NULL;
END $$;
"""

# The same totals from scratch. SHARE mode lets readers in but no writer: a row inserted
# meanwhile would be counted twice or not at all.
ROLLUP_REBUILD = f"""
CREATE FUNCTION sluice_usage_rollup_rebuild() RETURNS bigint LANGUAGE plpgsql
SET work_mem = '256MB' AS $$
DECLARE
    cells bigint;
BEGIN
    LOCK TABLE usage_events IN SHARE MODE;
    TRUNCATE usage_rollup;
    INSERT INTO usage_rollup ({CELL}, calls, requests, input_tokens, output_tokens,
        cached_input_tokens, cost_usd, unpriced_calls)
    SELECT (date_trunc('day', finished_at AT TIME ZONE 'UTC'))::date, tenant, api_key_id,
           model, deployment, provider, count(*), count(*) FILTER (WHERE first),
           sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
           coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL)
    FROM (SELECT u.*, row_number() OVER (PARTITION BY request_id
                                         ORDER BY finished_at, event_id) = 1 AS first
          FROM usage_events u) AS s
    GROUP BY 1, tenant, api_key_id, model, deployment, provider;
    GET DIAGNOSTICS cells = ROW_COUNT;
    RETURN cells;
END $$;
"""

TRIGGER = """
CREATE TRIGGER usage_rollup_add AFTER INSERT ON usage_events
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION sluice_usage_rollup_add()
"""

# Same names, columns and types as in 0002 (CREATE OR REPLACE keeps dependent objects).
# A cost is NULL where every call was unpriced, as `sum` over NULLs was.
USAGE_DAILY = """
CREATE OR REPLACE VIEW usage_daily AS
SELECT day, tenant, api_key_id, model, deployment, provider, calls, requests,
       input_tokens, output_tokens,
       (CASE WHEN calls > unpriced_calls THEN cost_usd END)::numeric AS cost_usd,
       unpriced_calls
FROM usage_rollup
"""

SPEND_BY_TENANT_MONTH = """
CREATE OR REPLACE VIEW spend_by_tenant_month AS
SELECT (date_trunc('month', day::timestamp))::date AS month,
       tenant,
       sum(calls)::bigint AS calls,
       sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens,
       (CASE WHEN sum(calls) > sum(unpriced_calls) THEN sum(cost_usd) END)::numeric AS cost_usd,
       sum(unpriced_calls)::bigint AS unpriced_calls
FROM usage_rollup
GROUP BY 1, tenant
"""

# 0002's definitions, for the downgrade.
OLD_USAGE_DAILY = """
CREATE OR REPLACE VIEW usage_daily AS
SELECT (date_trunc('day', finished_at AT TIME ZONE 'UTC'))::date AS day,
       tenant, api_key_id, model, deployment, provider,
       count(*) AS calls,
       count(DISTINCT request_id) AS requests,
       sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens,
       sum(cost_usd) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls
FROM usage_events
GROUP BY 1, tenant, api_key_id, model, deployment, provider
"""

OLD_SPEND_BY_TENANT_MONTH = """
CREATE OR REPLACE VIEW spend_by_tenant_month AS
SELECT (date_trunc('month', finished_at AT TIME ZONE 'UTC'))::date AS month,
       tenant,
       count(*) AS calls,
       sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens,
       sum(cost_usd) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls
FROM usage_events
GROUP BY 1, tenant
"""


def upgrade() -> None:
    op.create_table(
        "usage_rollup",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("api_key_id", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("deployment", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("calls", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost_usd", sa.Numeric(30, 10), server_default="0", nullable=False),
        sa.Column("unpriced_calls", sa.BigInteger(), server_default="0", nullable=False),
        sa.UniqueConstraint(
            "day", "tenant", "api_key_id", "model", "deployment", "provider",
            name="uq_usage_rollup_cell", postgresql_nulls_not_distinct=True,
        ),
    )
    op.execute(ROLLUP_ADD)
    op.execute(ROLLUP_REBUILD)
    op.execute("SELECT sluice_usage_rollup_rebuild()")
    op.execute(TRIGGER)
    op.execute(USAGE_DAILY)
    op.execute(SPEND_BY_TENANT_MONTH)


def downgrade() -> None:
    op.execute(OLD_SPEND_BY_TENANT_MONTH)
    op.execute(OLD_USAGE_DAILY)
    op.execute("DROP TRIGGER usage_rollup_add ON usage_events")
    op.execute("DROP FUNCTION sluice_usage_rollup_rebuild()")
    op.execute("DROP FUNCTION sluice_usage_rollup_add()")
    op.drop_table("usage_rollup")
