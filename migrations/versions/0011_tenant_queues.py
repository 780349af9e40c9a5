"""Fair share between tenants: weights, caps on queued requests, and the queue behind them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

A tenant may be given `max_queued_requests`: how many of its requests may be accepted and
not yet finished at once. Admission counts them in `tenant_queues` (one row per tenant,
locked last by every writer, after the spend accounts and the key's rate window) and
refuses the next one with `queue_full`; each hold remembers whether it counted
(`spend_holds.queued_tenant`) so that releasing it gives the place back exactly once.
Without a cap nothing is counted and admission stays as it was.

`tenants.weight` (default 1) is a tenant's share relative to others: workers give a tenant
of weight 2 twice the turns at a budget gate and twice the slots before its requests
overflow to the batch topic.

`moved_requests` remembers which requests a worker moved to the batch topic for fair
share: a worker that is given the original again (after a crash or a rebalance, before
the move was committed) skips it instead of calling a provider for it a second time.

`sluice_admit` and `sluice_spend_release` are replaced (the old ones are in 0006).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADMIT = """
CREATE FUNCTION sluice_admit(
    p_request_id text,
    p_rate_scope text, p_rpm float8, p_tpm float8, p_window float8,
    p_scopes text[], p_usd_limits numeric[], p_token_limits numeric[],
    p_period date, p_usd numeric, p_tokens bigint,
    p_now float8 DEFAULT NULL,
    p_queue_tenant text DEFAULT NULL, p_max_queued bigint DEFAULT NULL
) RETURNS TABLE (admitted boolean, refused_by text, retry_after_s float8)
LANGUAGE plpgsql AS $$
DECLARE
    t float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
    a spend_accounts%ROWTYPE;
    w key_rate_windows%ROWTYPE;
    i int;
    start float8;
    wait float8;
    n_queued bigint;
BEGIN
    -- Admitting the same id twice (a batch relaunched after a crash) holds it once.
    IF EXISTS (SELECT 1 FROM spend_holds WHERE request_id = p_request_id) THEN
        RETURN QUERY SELECT true, NULL::text, 0::float8;
        RETURN;
    END IF;
    -- Budgets first, in the caller's (sorted) scope order.
    FOR i IN 1..coalesce(cardinality(p_scopes), 0) LOOP
        INSERT INTO spend_accounts (scope, period) VALUES (p_scopes[i], p_period)
            ON CONFLICT DO NOTHING;
        SELECT * INTO a FROM spend_accounts
            WHERE scope = p_scopes[i] AND period = p_period FOR UPDATE;
        IF p_usd_limits[i] IS NOT NULL AND (a.spent_usd + a.reserved_usd + p_usd > p_usd_limits[i]
                OR a.spent_usd + a.reserved_usd >= p_usd_limits[i]) THEN
            RETURN QUERY SELECT false, p_scopes[i] || ' monthly_budget_usd', NULL::float8;
            RETURN;
        END IF;
        IF p_token_limits[i] IS NOT NULL
                AND a.spent_tokens + a.reserved_tokens + p_tokens > p_token_limits[i] THEN
            RETURN QUERY SELECT false, p_scopes[i] || ' monthly_budget_tokens', NULL::float8;
            RETURN;
        END IF;
    END LOOP;
    IF p_rate_scope IS NOT NULL THEN
        start := floor(t / p_window) * p_window;
        INSERT INTO key_rate_windows (scope, window_start) VALUES (p_rate_scope, start)
            ON CONFLICT DO NOTHING;
        SELECT * INTO w FROM key_rate_windows WHERE scope = p_rate_scope FOR UPDATE;
        IF w.window_start < start THEN  -- a new fixed window: the current one becomes previous
            IF w.window_start = start - p_window THEN
                w.prev_requests := w.requests; w.prev_tokens := w.tokens;
            ELSE
                w.prev_requests := 0; w.prev_tokens := 0;
            END IF;
            w.requests := 0; w.tokens := 0; w.window_start := start;
        END IF;
        IF p_rpm > 0 THEN
            wait := sluice_window_wait(w.prev_requests, w.requests, 1, p_rpm, t - start, p_window);
            IF wait <> 0 THEN
                RETURN QUERY SELECT false, p_rate_scope || ' rpm', wait;
                RETURN;
            END IF;
        END IF;
        IF p_tpm > 0 THEN
            wait := sluice_window_wait(w.prev_tokens, w.tokens, p_tokens, p_tpm, t - start, p_window);
            IF wait <> 0 THEN
                RETURN QUERY SELECT false, p_rate_scope || ' tpm', wait;
                RETURN;
            END IF;
        END IF;
    END IF;
    -- The queue cap last: its row is the last lock every writer takes.
    IF p_queue_tenant IS NOT NULL THEN
        INSERT INTO tenant_queues (tenant) VALUES (p_queue_tenant) ON CONFLICT DO NOTHING;
        SELECT q.queued INTO n_queued FROM tenant_queues q
            WHERE q.tenant = p_queue_tenant FOR UPDATE;
        IF p_max_queued IS NOT NULL AND n_queued >= p_max_queued THEN
            RETURN QUERY SELECT false, 'tenant:' || p_queue_tenant || ' queue_full', NULL::float8;
            RETURN;
        END IF;
        UPDATE tenant_queues SET queued = tenant_queues.queued + 1
            WHERE tenant = p_queue_tenant;
    END IF;
    IF p_rate_scope IS NOT NULL THEN
        UPDATE key_rate_windows SET window_start = w.window_start,
            requests = w.requests + 1, tokens = w.tokens + p_tokens,
            prev_requests = w.prev_requests, prev_tokens = w.prev_tokens
            WHERE scope = p_rate_scope;
    END IF;
    IF coalesce(cardinality(p_scopes), 0) > 0 OR p_queue_tenant IS NOT NULL THEN
        UPDATE spend_accounts SET reserved_usd = reserved_usd + p_usd,
            reserved_tokens = reserved_tokens + p_tokens, updated_at = now()
            WHERE scope = ANY(p_scopes) AND period = p_period;
        INSERT INTO spend_holds (request_id, scopes, period, usd, tokens, queued_tenant)
            VALUES (p_request_id, coalesce(p_scopes, '{}'), p_period, p_usd, p_tokens,
                    p_queue_tenant);
    END IF;
    RETURN QUERY SELECT true, NULL::text, 0::float8;
END $$;
"""

SPEND_RELEASE = """
CREATE FUNCTION sluice_spend_release(p_request_ids text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    released integer;
BEGIN
    -- Lock the accounts first, in (scope, period) order, like every other writer.
    PERFORM 1 FROM spend_accounts a
        WHERE (a.scope, a.period) IN (
            SELECT s.scope, h.period FROM spend_holds h, unnest(h.scopes) AS s(scope)
            WHERE h.request_id = ANY(p_request_ids))
        ORDER BY a.scope, a.period FOR UPDATE;
    PERFORM 1 FROM tenant_queues q
        WHERE q.tenant IN (SELECT h.queued_tenant FROM spend_holds h
                           WHERE h.request_id = ANY(p_request_ids))
        ORDER BY q.tenant FOR UPDATE;
    WITH gone AS (
        DELETE FROM spend_holds WHERE request_id = ANY(p_request_ids)
            RETURNING scopes, period, usd, tokens, queued_tenant
    ), dequeued AS (
        UPDATE tenant_queues q SET queued = greatest(0, q.queued - d.n)
            FROM (SELECT queued_tenant, count(*) AS n FROM gone
                  WHERE queued_tenant IS NOT NULL GROUP BY queued_tenant) d
            WHERE q.tenant = d.queued_tenant
            RETURNING 1
    ), per_scope AS (
        SELECT s.scope, g.period, sum(g.usd) AS usd, sum(g.tokens) AS tokens,
               count(*) AS holds
            FROM gone g, unnest(g.scopes) AS s(scope) GROUP BY s.scope, g.period
    ), changed AS (
        UPDATE spend_accounts a SET
            reserved_usd = greatest(0, a.reserved_usd - p.usd),
            reserved_tokens = greatest(0, a.reserved_tokens - p.tokens),
            updated_at = now()
            FROM per_scope p WHERE a.scope = p.scope AND a.period = p.period
            RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) INTO released
        FROM (SELECT count(*) FROM changed) AS c, (SELECT count(*) FROM dequeued) AS d;
    RETURN released;
END $$;
"""

_OLD_ADMIT = ("sluice_admit(text, text, float8, float8, float8, text[], numeric[], numeric[], date, numeric, bigint, float8)")


def upgrade() -> None:
    op.add_column("tenants", sa.Column("max_queued_requests", sa.BigInteger(), nullable=True))
    op.add_column("tenants", sa.Column("weight", sa.Float(precision=53), server_default="1",
                                       nullable=False))
    op.create_check_constraint("ck_tenants_weight", "tenants", "weight > 0")
    op.add_column("spend_holds", sa.Column("queued_tenant", sa.Text(), nullable=True))
    op.create_table(
        "tenant_queues",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("queued", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_tenant_queues"),
    )
    op.create_table(
        "moved_requests",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_moved_requests"),
    )
    op.create_index("ix_moved_requests_moved_at", "moved_requests", ["moved_at"])
    op.execute(f"DROP FUNCTION {_OLD_ADMIT}")
    op.execute("DROP FUNCTION sluice_spend_release(text[])")
    op.execute(ADMIT)
    op.execute(SPEND_RELEASE)


def downgrade() -> None:
    previous = importlib.import_module("migrations.versions.0006_spend_budgets")
    op.execute("DROP FUNCTION sluice_admit(text, text, float8, float8, float8, text[], "
               "numeric[], numeric[], date, numeric, bigint, float8, text, bigint)")
    op.execute("DROP FUNCTION sluice_spend_release(text[])")
    op.execute(previous.ADMIT)
    op.execute(previous.SPEND_RELEASE)
    op.drop_table("tenant_queues")
    op.drop_index("ix_moved_requests_moved_at", table_name="moved_requests")
    op.drop_table("moved_requests")
    op.drop_column("spend_holds", "queued_tenant")
    op.drop_constraint("ck_tenants_weight", "tenants", type_="check")
    op.drop_column("tenants", "weight")
    op.drop_column("tenants", "max_queued_requests")
