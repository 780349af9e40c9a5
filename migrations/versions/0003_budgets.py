"""Shared provider budgets: one row per deployment, changed only by two SQL functions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Every worker process reserves and settles through `sluice_budget_reserve` and
`sluice_budget_settle`, each one statement and one round trip that locks the deployment's
row for the duration of the call: the arithmetic of `broker.budgets.algorithm` (which the
in-memory fake runs in Python; a contract test runs both) done where the state lives.
Times are the database's own clock unless a caller passes one (tests), so workers on
machines with skewed clocks still agree.

Dimensions are arrays in a fixed order: requests, tokens, input tokens, output tokens.
A limit of 0 means "not limited".
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLOATS = postgresql.ARRAY(sa.Float(precision=53))

# Effective limit, capacity and refill rate of each dimension (see algorithm.py).
_SHAPE = """
    scale_now := least(1.0, s.scale + p_recovery * greatest(0, t - s.scale_at) / p_window);
    FOR i IN 1..4 LOOP
        lim[i] := p_limits[i];
        IF lim[i] > 0 AND s.learned[i] > 0 THEN lim[i] := least(lim[i], s.learned[i]); END IF;
        lim[i] := lim[i] * scale_now;
        cap[i] := p_burst * lim[i];
        rate[i] := (lim[i] - cap[i]) / (p_window + p_guard);
        lvl[i] := least(cap[i], s.levels[i] + greatest(0, t - s.updated_at) * rate[i]);
    END LOOP;
"""

_DECLARE = """
    t float8 := coalesce(p_now, extract(epoch FROM clock_timestamp()));
    s budget_state%ROWTYPE;
    scale_now float8;
    lim float8[] := '{0,0,0,0}'; cap float8[] := '{0,0,0,0}';
    rate float8[] := '{0,0,0,0}'; lvl float8[] := '{0,0,0,0}';
    i int;
"""

_LOCK = """
    INSERT INTO budget_state (deployment, updated_at, scale_at) VALUES (p_deployment, t, t)
        ON CONFLICT (deployment) DO NOTHING;
    SELECT * INTO s FROM budget_state WHERE deployment = p_deployment FOR UPDATE;
"""

RESERVE = f"""
CREATE FUNCTION sluice_budget_reserve(
    p_deployment text, p_limits float8[], p_costs float8[], p_window float8, p_burst float8,
    p_guard float8, p_recovery float8, p_max_concurrency int, p_lease_s float8,
    p_margin float8, p_now float8 DEFAULT NULL
) RETURNS TABLE (granted boolean, wait_s float8, lease float8, remaining float8[])
LANGUAGE plpgsql AS $$
DECLARE
{_DECLARE}
    live float8[];
    wait float8 := 0;
    need float8;
BEGIN
{_LOCK}
{_SHAPE}
    live := ARRAY(SELECT x FROM unnest(s.leases) x WHERE x > t);
    IF s.blocked_until > t THEN wait := s.blocked_until - t; END IF;
    IF p_max_concurrency > 0 AND cardinality(live) >= p_max_concurrency THEN
        wait := greatest(wait, 0.05);
    END IF;
    FOR i IN 1..4 LOOP
        IF lim[i] > 0 AND p_costs[i] > 0 THEN
            -- A call bigger than the burst may go only from a full bucket (documented).
            need := least(p_costs[i] + p_margin * cap[i], cap[i]);
            IF lvl[i] < need THEN
                wait := greatest(wait, CASE WHEN rate[i] > 0
                                       THEN (need - lvl[i]) / rate[i] ELSE p_window END);
            END IF;
        END IF;
    END LOOP;
    IF wait > 0 THEN
        UPDATE budget_state SET levels = lvl, updated_at = t, leases = live
            WHERE deployment = p_deployment;
        RETURN QUERY SELECT false, wait, 0::float8, lvl;
        RETURN;
    END IF;
    FOR i IN 1..4 LOOP
        IF lim[i] > 0 THEN lvl[i] := lvl[i] - p_costs[i]; END IF;
    END LOOP;
    UPDATE budget_state SET levels = lvl, updated_at = t,
        leases = live || (t + p_lease_s),
        reserved = ARRAY(SELECT a + b FROM unnest(s.reserved, p_costs) AS u(a, b)),
        requests_granted = s.requests_granted + 1
        WHERE deployment = p_deployment;
    RETURN QUERY SELECT true, 0::float8, t + p_lease_s, lvl;
END $$;
"""

SETTLE = f"""
CREATE FUNCTION sluice_budget_settle(
    p_deployment text, p_limits float8[], p_reserved float8[], p_used float8[],
    p_window float8, p_burst float8, p_guard float8, p_recovery float8, p_lease float8,
    p_now float8 DEFAULT NULL
) RETURNS float8[]
LANGUAGE plpgsql AS $$
DECLARE
{_DECLARE}
    at int;
BEGIN
{_LOCK}
{_SHAPE}
    FOR i IN 1..4 LOOP
        -- Refund (or charge) the difference between the estimate and what was used.
        IF lim[i] > 0 THEN lvl[i] := least(cap[i], lvl[i] + p_reserved[i] - p_used[i]); END IF;
    END LOOP;
    at := array_position(s.leases, p_lease);
    UPDATE budget_state SET levels = lvl, updated_at = t,
        leases = CASE WHEN at IS NULL THEN s.leases
                      ELSE s.leases[1:at - 1] || s.leases[at + 1:] END,
        reserved = ARRAY(SELECT greatest(0, a - b) FROM unnest(s.reserved, p_reserved) u(a, b)),
        used = ARRAY(SELECT a + b FROM unnest(s.used, p_used) AS u(a, b))
        WHERE deployment = p_deployment;
    RETURN lvl;
END $$;
"""


def upgrade() -> None:
    op.create_table(
        "budget_state",
        sa.Column("deployment", sa.Text(), nullable=False),
        # Seconds since the epoch (database clock): float arithmetic stays simple in SQL.
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.Column("levels", FLOATS, server_default="{0,0,0,0}", nullable=False),
        sa.Column("leases", FLOATS, server_default="{}", nullable=False),
        sa.Column("reserved", FLOATS, server_default="{0,0,0,0}", nullable=False),
        sa.Column("used", FLOATS, server_default="{0,0,0,0}", nullable=False),
        sa.Column("learned", FLOATS, server_default="{0,0,0,0}", nullable=False),
        sa.Column("blocked_until", sa.Float(precision=53), server_default="0", nullable=False),
        sa.Column("scale", sa.Float(precision=53), server_default="1", nullable=False),
        sa.Column("scale_at", sa.Float(precision=53), nullable=False),
        sa.Column("requests_granted", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("rate_limited", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("deployment", name="pk_budget_state"),
    )
    op.execute(RESERVE)
    op.execute(SETTLE)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS sluice_budget_settle")
    op.execute("DROP FUNCTION IF EXISTS sluice_budget_reserve")
    op.drop_table("budget_state")
