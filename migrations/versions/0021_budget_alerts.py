"""Budget alerts: thresholds per tenant and key, fired once per threshold and period.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05

- `budget_alert_rules`: one row per scope (`tenant:<name>` or `key:<id>`): the percentages
  of the scope's monthly USD budget that alert (`thresholds_pct`) and an absolute USD
  spend per UTC day that alerts (`daily_usd`).
- `budget_alerts_fired`: one row per alert sent; the unique (scope, threshold, period) is
  what makes an alert fire once per threshold and period, however often spend grows or
  the ledger redelivers.
- `budget_daily_spend`: spend per scope and UTC day, kept only for scopes with a daily
  alert (spend_accounts are monthly).

Detection is a trigger on `spend_accounts`, so it runs in the ledger's own transaction
(the one that records usage: an alert is never lost nor sent for spend rolled back) and
only when `spent_usd` grows: admission touches `reserved_usd` only and never runs it. A
scope without a rule costs one primary-key lookup. A fired alert is written straight to
the webhook outbox (`webhook_deliveries`), one row per subscribed endpoint of the tenant,
so the deliverer signs, sends and retries it like every other event.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
MONEY = sa.Numeric(20, 10)

# Attempts of an alert's delivery: the default of `SLUICE_WEBHOOK_MAX_ATTEMPTS` (the
# trigger cannot read the deliverer's settings; `sluice webhooks redeliver` adds more).
ALERT_DELIVERY_ATTEMPTS = 8

FIRE = f"""
CREATE FUNCTION sluice_budget_alert_fire(
    p_scope text, p_tenant text, p_key text, p_threshold text, p_period date,
    p_window text, p_spend numeric, p_budget numeric
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    fired bigint;
    body text;
BEGIN
    INSERT INTO budget_alerts_fired (scope, tenant, threshold, period, spend_usd, budget_usd)
        VALUES (p_scope, p_tenant, p_threshold, p_period, p_spend, p_budget)
        ON CONFLICT DO NOTHING RETURNING id INTO fired;
    IF fired IS NULL THEN
        RETURN;  -- fired before in this period
    END IF;
    body := jsonb_build_object(
        'type', 'budget.threshold_crossed',
        'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        'data', jsonb_build_object(
            'alert_id', 'budget_alert_' || fired,
            'tenant', p_tenant, 'key', p_key, 'scope', p_scope, 'threshold', p_threshold,
            'window', p_window,
            'period', CASE WHEN p_window = 'month' THEN to_char(p_period, 'YYYY-MM')
                           ELSE to_char(p_period, 'YYYY-MM-DD') END,
            'spend_usd', trim_scale(p_spend)::text, 'budget_usd', trim_scale(p_budget)::text)
    )::text;
    INSERT INTO webhook_deliveries (id, request_id, tenant, url, event_type, payload,
                                    attempt_limit, max_attempts, next_attempt_at)
        SELECT 'msg_' || md5('budget_alert_' || fired || chr(10) || e.url),
               'budget_alert_' || fired, p_tenant, e.url, 'budget.threshold_crossed', body,
               {ALERT_DELIVERY_ATTEMPTS}, {ALERT_DELIVERY_ATTEMPTS}, now()
        FROM webhook_endpoints e
        WHERE e.tenant = p_tenant AND e.subscribed AND e.disabled_at IS NULL
        ON CONFLICT (id) DO NOTHING;
END $$;
"""

# Python twin of the threshold arithmetic: broker.stores.budget_alerts.crossed_thresholds.
DETECT = """
CREATE FUNCTION sluice_budget_alerts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r budget_alert_rules%ROWTYPE;
    v_key text;
    budget numeric;
    pct integer;
    today date;
    day_total numeric;
    grown numeric;
BEGIN
    SELECT * INTO r FROM budget_alert_rules WHERE scope = NEW.scope;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_key := CASE WHEN NEW.scope LIKE 'key:%' THEN substr(NEW.scope, 5) END;
    IF cardinality(r.thresholds_pct) > 0 THEN
        IF v_key IS NULL THEN
            SELECT monthly_budget_usd INTO budget FROM tenants WHERE name = r.tenant;
        ELSE
            SELECT monthly_budget_usd INTO budget FROM api_keys WHERE id = v_key;
        END IF;
        IF budget > 0 THEN
            FOREACH pct IN ARRAY r.thresholds_pct LOOP
                IF NEW.spent_usd * 100 >= budget * pct THEN
                    PERFORM sluice_budget_alert_fire(NEW.scope, r.tenant, v_key, pct || '%',
                        NEW.period, 'month', NEW.spent_usd, budget);
                END IF;
            END LOOP;
        END IF;
    END IF;
    grown := NEW.spent_usd - CASE WHEN TG_OP = 'UPDATE' THEN OLD.spent_usd ELSE 0 END;
    IF r.daily_usd IS NOT NULL AND grown > 0 THEN
        today := (now() AT TIME ZONE 'UTC')::date;
        INSERT INTO budget_daily_spend AS d (scope, day, spent_usd)
            VALUES (NEW.scope, today, grown)
            ON CONFLICT (scope, day) DO UPDATE SET spent_usd = d.spent_usd + excluded.spent_usd
            RETURNING d.spent_usd INTO day_total;
        IF day_total >= r.daily_usd THEN
            PERFORM sluice_budget_alert_fire(NEW.scope, r.tenant, v_key, 'daily', today, 'day',
                day_total, r.daily_usd);
        END IF;
    END IF;
    RETURN NULL;
END $$;
"""

# One statement each: asyncpg prepares every statement and refuses several in one.
TRIGGERS = (
    "CREATE TRIGGER spend_accounts_budget_alerts_inserted AFTER INSERT ON spend_accounts "
    "FOR EACH ROW WHEN (NEW.spent_usd > 0) EXECUTE FUNCTION sluice_budget_alerts()",
    "CREATE TRIGGER spend_accounts_budget_alerts_grown AFTER UPDATE OF spent_usd "
    "ON spend_accounts FOR EACH ROW WHEN (NEW.spent_usd > OLD.spent_usd) "
    "EXECUTE FUNCTION sluice_budget_alerts()",
)


def upgrade() -> None:
    op.create_table(
        "budget_alert_rules",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("thresholds_pct", postgresql.ARRAY(sa.Integer()), server_default="{}",
                  nullable=False),
        sa.Column("daily_usd", MONEY, nullable=True),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_budget_alert_rules"),
    )
    op.create_index("ix_budget_alert_rules_tenant", "budget_alert_rules", ["tenant"])
    op.create_table(
        "budget_alerts_fired",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("threshold", sa.Text(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("spend_usd", MONEY, nullable=False),
        sa.Column("budget_usd", MONEY, nullable=False),
        sa.Column("fired_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budget_alerts_fired"),
        sa.UniqueConstraint("scope", "threshold", "period",
                            name="uq_budget_alerts_fired_scope_threshold_period"),
    )
    op.create_index("ix_budget_alerts_fired_tenant_fired_at", "budget_alerts_fired",
                    ["tenant", "fired_at"])
    op.create_table(
        "budget_daily_spend",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("spent_usd", MONEY, server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("scope", "day", name="pk_budget_daily_spend"),
    )
    op.execute(FIRE)
    op.execute(DETECT)
    for trigger in TRIGGERS:
        op.execute(trigger)


def downgrade() -> None:
    op.execute("DROP TRIGGER spend_accounts_budget_alerts_grown ON spend_accounts")
    op.execute("DROP TRIGGER spend_accounts_budget_alerts_inserted ON spend_accounts")
    op.execute("DROP FUNCTION sluice_budget_alerts()")
    op.execute("DROP FUNCTION sluice_budget_alert_fire(text, text, text, text, date, text, "
               "numeric, numeric)")
    op.drop_table("budget_daily_spend")
    op.drop_index("ix_budget_alerts_fired_tenant_fired_at", table_name="budget_alerts_fired")
    op.drop_table("budget_alerts_fired")
    op.drop_index("ix_budget_alert_rules_tenant", table_name="budget_alert_rules")
    op.drop_table("budget_alert_rules")
