"""Key limits, price catalog (seeded from broker/stores/prices.yaml), tenants, usage views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
MONEY = sa.Numeric(20, 10)

# Days and months are UTC: an analyst in any time zone gets the same totals.
USAGE_DAILY = """
CREATE VIEW usage_daily AS
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

SPEND_BY_TENANT_MONTH = """
CREATE VIEW spend_by_tenant_month AS
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
    for column in (
        sa.Column("models", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("monthly_budget_usd", MONEY, nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
    ):
        op.add_column("api_keys", column)
    op.add_column("usage_events", sa.Column("price_id", sa.BigInteger(), nullable=True))

    prices = op.create_table(
        "prices",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("deployment", sa.Text(), nullable=True),
        sa.Column("input_usd_per_mtok", MONEY, nullable=False),
        sa.Column("output_usd_per_mtok", MONEY, nullable=False),
        sa.Column("cached_input_usd_per_mtok", MONEY, nullable=True),
        sa.Column("currency", sa.Text(), server_default="USD", nullable=False),
        sa.Column("effective_from", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prices"),
        sa.UniqueConstraint(
            "model", "deployment", "effective_from",
            name="uq_prices_model_deployment_effective_from",
            postgresql_nulls_not_distinct=True,
        ),
        sa.CheckConstraint("currency = 'USD'", name="ck_prices_currency"),
    )
    op.create_table(
        "tenants",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("store_content", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("monthly_budget_usd", MONEY, nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tenants"),
    )
    # Usage by key and day, and the unfiltered time range scans of `GET /v1/usage` (admin).
    op.create_index("ix_usage_events_api_key_id_finished_at", "usage_events",
                    ["api_key_id", "finished_at"])
    op.create_index("ix_usage_events_finished_at", "usage_events", ["finished_at"])
    op.execute(USAGE_DAILY)
    op.execute(SPEND_BY_TENANT_MONTH)

    # Seed from the shipped catalog; imported here so the file is read at migration time.
    from broker.stores.prices import load_catalog

    op.bulk_insert(prices, [spec.model_dump() for spec in load_catalog()])


def downgrade() -> None:
    op.execute("DROP VIEW spend_by_tenant_month")
    op.execute("DROP VIEW usage_daily")
    op.drop_index("ix_usage_events_finished_at", "usage_events")
    op.drop_index("ix_usage_events_api_key_id_finished_at", "usage_events")
    op.drop_table("tenants")
    op.drop_table("prices")
    op.drop_column("usage_events", "price_id")
    for name in ("expires_at", "monthly_budget_usd", "tpm", "rpm", "models"):
        op.drop_column("api_keys", name)
