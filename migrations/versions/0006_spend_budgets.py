"""Tenant and key budgets: monthly spend accounts, admission holds, per-key rate windows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

Admission (ingress) and settlement (ledger) meet in three SQL functions, each one
statement and one round trip:

- `sluice_admit` checks a request against its key's RPM/TPM (a sliding-window counter)
  and its tenant's and key's monthly budgets, and if everything allows it, counts it in
  the key's window, reserves its estimated cost and tokens on every budget scope, and
  records a hold under the request id. Nothing changes when it refuses; an id that
  already holds is admitted again without counting twice.
- `sluice_spend_add` adds recorded usage to the spend accounts (the ledger calls it in
  the transaction that inserts the usage rows, with only the rows that were new).
- `sluice_spend_release` ends the holds of finished requests; a hold is deleted once, so
  a redelivered result releases nothing twice.

Every function locks spend rows in (scope, period) order, so admissions and the ledger
never deadlock on each other. Scopes are `tenant:<name>` and `key:<id>`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
MONEY = sa.Numeric(20, 10)

# Seconds until a sliding-window counter lets a call of cost k through. The window holds
# the previous fixed window's count p (weighted by the share of it still inside the
# sliding window) plus the current window's count c; e = seconds into the current window.
# Returns -1 when k alone exceeds the limit (it can never go). Python twin:
# broker.stores.admission.window_wait (a contract test runs both).
WINDOW_WAIT = """
CREATE FUNCTION sluice_window_wait(p float8, c float8, k float8, l float8, e float8, w float8)
RETURNS float8 LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN k > l THEN -1
        WHEN p * (1 - e / w) + c + k <= l THEN 0
        WHEN c + k <= l THEN greatest(0, w * (1 - (l - c - k) / p) - e)
        ELSE (w - e) + w * (1 - (l - k) / c)
    END
$$;
"""

ADMIT = """
CREATE FUNCTION sluice_admit(
    p_request_id text,
    p_rate_scope text, p_rpm float8, p_tpm float8, p_window float8,
    p_scopes text[], p_usd_limits numeric[], p_token_limits numeric[],
    p_period date, p_usd numeric, p_tokens bigint,
    p_now float8 DEFAULT NULL
) RETURNS TABLE (admitted boolean, refused_by text, retry_after_s float8)
LANGUAGE plpgsql AS $$
DECLARE
    t float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
    a spend_accounts%ROWTYPE;
    w key_rate_windows%ROWTYPE;
    i int;
    start float8;
    wait float8;
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
        UPDATE key_rate_windows SET window_start = w.window_start,
            requests = w.requests + 1, tokens = w.tokens + p_tokens,
            prev_requests = w.prev_requests, prev_tokens = w.prev_tokens
            WHERE scope = p_rate_scope;
    END IF;
    IF coalesce(cardinality(p_scopes), 0) > 0 THEN
        UPDATE spend_accounts SET reserved_usd = reserved_usd + p_usd,
            reserved_tokens = reserved_tokens + p_tokens, updated_at = now()
            WHERE scope = ANY(p_scopes) AND period = p_period;
        INSERT INTO spend_holds (request_id, scopes, period, usd, tokens)
            VALUES (p_request_id, p_scopes, p_period, p_usd, p_tokens);
    END IF;
    RETURN QUERY SELECT true, NULL::text, 0::float8;
END $$;
"""

SPEND_ADD = """
CREATE FUNCTION sluice_spend_add(
    p_scopes text[], p_periods date[], p_usd numeric[], p_tokens bigint[]
) RETURNS void LANGUAGE sql AS $$
    INSERT INTO spend_accounts AS a (scope, period, spent_usd, spent_tokens)
    SELECT scope, period, sum(usd), sum(tokens)
        FROM unnest(p_scopes, p_periods, p_usd, p_tokens) AS u(scope, period, usd, tokens)
        GROUP BY scope, period ORDER BY scope, period
    ON CONFLICT (scope, period) DO UPDATE SET
        spent_usd = a.spent_usd + excluded.spent_usd,
        spent_tokens = a.spent_tokens + excluded.spent_tokens,
        updated_at = now()
$$;
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
    WITH gone AS (
        DELETE FROM spend_holds WHERE request_id = ANY(p_request_ids)
            RETURNING scopes, period, usd, tokens
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
    SELECT (SELECT count(*) FROM gone) INTO released FROM (SELECT count(*) FROM changed) AS c;
    RETURN released;
END $$;
"""


def upgrade() -> None:
    op.create_table(
        "spend_accounts",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("spent_usd", MONEY, server_default="0", nullable=False),
        sa.Column("spent_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reserved_usd", MONEY, server_default="0", nullable=False),
        sa.Column("reserved_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "period", name="pk_spend_accounts"),
    )
    op.create_table(
        "spend_holds",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("usd", MONEY, nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_spend_holds"),
    )
    op.create_index("ix_spend_holds_created_at", "spend_holds", ["created_at"])
    op.create_table(
        "key_rate_windows",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("window_start", sa.Float(precision=53), nullable=False),
        sa.Column("requests", sa.Float(precision=53), server_default="0", nullable=False),
        sa.Column("tokens", sa.Float(precision=53), server_default="0", nullable=False),
        sa.Column("prev_requests", sa.Float(precision=53), server_default="0", nullable=False),
        sa.Column("prev_tokens", sa.Float(precision=53), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_key_rate_windows"),
    )
    op.add_column("api_keys", sa.Column("monthly_budget_tokens", sa.BigInteger(), nullable=True))
    op.add_column("tenants", sa.Column("monthly_budget_tokens", sa.BigInteger(), nullable=True))
    op.add_column("usage_events", sa.Column(
        "cached_input_tokens", sa.Integer(), server_default="0", nullable=False))
    # The prompt, kept only for tenants that opted in to storing content.
    op.add_column("requests", sa.Column("prompt", postgresql.JSONB(), nullable=True))
    op.execute(WINDOW_WAIT)
    op.execute(ADMIT)
    op.execute(SPEND_ADD)
    op.execute(SPEND_RELEASE)


def downgrade() -> None:
    op.execute("DROP FUNCTION sluice_spend_release(text[])")
    op.execute("DROP FUNCTION sluice_spend_add(text[], date[], numeric[], bigint[])")
    op.execute("DROP FUNCTION sluice_admit(text, text, float8, float8, float8, text[], "
               "numeric[], numeric[], date, numeric, bigint, float8)")
    op.execute("DROP FUNCTION sluice_window_wait(float8, float8, float8, float8, float8, float8)")
    op.drop_column("requests", "prompt")
    op.drop_column("usage_events", "cached_input_tokens")
    op.drop_column("tenants", "monthly_budget_tokens")
    op.drop_column("api_keys", "monthly_budget_tokens")
    op.drop_table("key_rate_windows")
    op.drop_index("ix_spend_holds_created_at", table_name="spend_holds")
    op.drop_table("spend_holds")
    op.drop_table("spend_accounts")
