"""Daily alerts count the day spend happened; alerts fire per budget; one feedback per caller.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06

- Daily spend alerts: spend counts in the UTC day of its usage's `finished_at`, as the
  monthly accounts count the UTC month. The 0021 trigger used the time the ledger recorded
  the spend, so a ledger that caught up after midnight put yesterday's spend into today
  (an alert for the wrong day, and yesterday never reaching its amount). The trigger on
  `spend_accounts` cannot know the day (accounts are monthly), so the ledger now calls
  `sluice_usage_add` with the day of each new usage row as well: it adds the monthly
  accounts first (`sluice_spend_add`, whose trigger checks the monthly thresholds) and then,
  for scopes whose rule has a daily amount, the days, in (scope, day) order. Locks are
  taken in the order the 0021 trigger took them (account, then its days), so ledgers and
  admissions cannot deadlock on them. The ledger passes only rows it actually inserted:
  a redelivered event adds nothing, to the month or to the day.
- `budget_alerts_fired` is unique per (scope, threshold, period, budget_usd): a budget
  raised mid-month (100% fired at $100, now $500) fires its thresholds again, once, at the
  new amount; the same amount never fires twice in a period.
- `feedback` is unique per (request_id, api_key_id): a caller's new post on a request
  replaces its earlier one (each caller's latest opinion counts), so a retried
  POST changes nothing and reports are not skewed by repeats. Existing duplicates
  are removed first, keeping each pair's latest. `feedback_by_variant` counts requests
  (a request rated by several callers once, with the mean of their scores). Rows without a
  key (none are written by the HTTP edge) are not made unique: PostgreSQL treats NULLs as
  distinct, and NULLS NOT DISTINCT would need PostgreSQL 15.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Monthly thresholds only: the daily amount moved to `sluice_usage_add`, which knows days.
# Python twin of the threshold arithmetic: broker.stores.budget_alerts.crossed_thresholds.
DETECT = """
CREATE OR REPLACE FUNCTION sluice_budget_alerts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r budget_alert_rules%ROWTYPE;
    v_key text;
    budget numeric;
    pct integer;
BEGIN
    SELECT * INTO r FROM budget_alert_rules WHERE scope = NEW.scope;
    IF NOT FOUND OR cardinality(r.thresholds_pct) = 0 THEN
        RETURN NULL;
    END IF;
    v_key := CASE WHEN NEW.scope LIKE 'key:%' THEN substr(NEW.scope, 5) END;
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
    RETURN NULL;
END $$;
"""

USAGE_ADD = """
CREATE FUNCTION sluice_usage_add(
    p_scopes text[], p_periods date[], p_usd numeric[], p_tokens bigint[],
    p_day_scopes text[], p_days date[], p_day_usd numeric[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d record;
    day_total numeric;
BEGIN
    -- Months first (locks every account in (scope, period) order), then days: the order
    -- the 0021 trigger locked them in.
    PERFORM sluice_spend_add(p_scopes, p_periods, p_usd, p_tokens);
    FOR d IN
        SELECT u.scope, u.day, sum(u.usd) AS usd, a.tenant, a.daily_usd
        FROM unnest(p_day_scopes, p_days, p_day_usd) AS u(scope, day, usd)
        JOIN budget_alert_rules a ON a.scope = u.scope AND a.daily_usd IS NOT NULL
        WHERE u.usd > 0
        GROUP BY u.scope, u.day, a.tenant, a.daily_usd
        ORDER BY u.scope, u.day
    LOOP
        INSERT INTO budget_daily_spend AS s (scope, day, spent_usd)
            VALUES (d.scope, d.day, d.usd)
            ON CONFLICT (scope, day) DO UPDATE SET spent_usd = s.spent_usd + excluded.spent_usd
            RETURNING s.spent_usd INTO day_total;
        IF day_total >= d.daily_usd THEN
            PERFORM sluice_budget_alert_fire(d.scope, d.tenant,
                CASE WHEN d.scope LIKE 'key:%' THEN substr(d.scope, 5) END,
                'daily', d.day, 'day', day_total, d.daily_usd);
        END IF;
    END LOOP;
END $$;
"""

# Per request first (the mean of its callers' scores), then per group: a request counts
# once however many callers rated it. Same columns as 0022's, so analysts' queries stand.
FEEDBACK_BY_VARIANT = """
CREATE OR REPLACE VIEW feedback_by_variant AS
WITH rated AS (
    SELECT tenant, request_id, avg(score) AS score,
           min(created_at) AS first_at, max(created_at) AS last_at
    FROM feedback GROUP BY tenant, request_id
)
SELECT f.tenant,
       coalesce(r.model, '') AS model,
       coalesce(last_call.deployment, '') AS deployment,
       r.variant,
       count(*) AS feedback_count,
       avg(f.score) AS mean_score,
       min(f.first_at) AS first_at,
       max(f.last_at) AS last_at
FROM rated f
LEFT JOIN requests r ON r.id = f.request_id
LEFT JOIN LATERAL (
    SELECT u.deployment FROM usage_events u
    WHERE u.request_id = f.request_id
    ORDER BY u.finished_at DESC LIMIT 1
) last_call ON true
GROUP BY f.tenant, coalesce(r.model, ''), coalesce(last_call.deployment, ''), r.variant
"""

# Each (request, key)'s latest post stays (ties on created_at: the greater id).
DEDUPE_FEEDBACK = """
DELETE FROM feedback f USING feedback newer
WHERE newer.request_id = f.request_id AND newer.api_key_id = f.api_key_id
  AND (newer.created_at, newer.id) > (f.created_at, f.id)
"""

# Back to one alert per (scope, threshold, period): the first one fired stays.
DEDUPE_ALERTS = """
DELETE FROM budget_alerts_fired f USING budget_alerts_fired earlier
WHERE earlier.scope = f.scope AND earlier.threshold = f.threshold
  AND earlier.period = f.period AND earlier.id < f.id
"""

OLD_ALERT_KEY = "uq_budget_alerts_fired_scope_threshold_period"
ALERT_KEY = "uq_budget_alerts_fired_scope_threshold_period_budget_usd"
FEEDBACK_KEY = "uq_feedback_request_id_api_key_id"


def upgrade() -> None:
    op.execute(DETECT)
    op.execute(USAGE_ADD)
    op.drop_constraint(OLD_ALERT_KEY, "budget_alerts_fired", type_="unique")
    op.create_unique_constraint(ALERT_KEY, "budget_alerts_fired",
                                ["scope", "threshold", "period", "budget_usd"])
    op.execute(DEDUPE_FEEDBACK)
    op.create_unique_constraint(FEEDBACK_KEY, "feedback", ["request_id", "api_key_id"])
    op.execute(FEEDBACK_BY_VARIANT)


def downgrade() -> None:
    alerts = importlib.import_module("migrations.versions.0021_budget_alerts")
    feedback = importlib.import_module("migrations.versions.0022_feedback")
    op.execute(feedback.FEEDBACK_BY_VARIANT.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
    op.drop_constraint(FEEDBACK_KEY, "feedback", type_="unique")
    op.execute(DEDUPE_ALERTS)
    op.drop_constraint(ALERT_KEY, "budget_alerts_fired", type_="unique")
    op.create_unique_constraint(OLD_ALERT_KEY, "budget_alerts_fired",
                                ["scope", "threshold", "period"])
    op.execute("DROP FUNCTION sluice_usage_add(text[], date[], numeric[], bigint[], text[], "
               "date[], numeric[])")
    op.execute(alerts.DETECT.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
