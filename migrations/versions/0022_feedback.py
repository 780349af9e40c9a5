"""Feedback on answers: scores, labels and comments per request, and a view by variant.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05

- `feedback`: one row per `POST /v1/requests/{id}/feedback` (or per batch line, by custom
  id). Several rows per request are allowed (several raters, a later change of mind); the
  reports average them all. `comment` is content: null unless the tenant opted into
  content storage (`tenants.store_content`).
- `feedback_by_variant`: feedback count and mean score per tenant, model, deployment and
  routing variant, for analysts deciding A/B and canary rollouts. The deployment is that of
  the request's last recorded call (after a failover, the one that answered).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)

FEEDBACK_BY_VARIANT = """
CREATE VIEW feedback_by_variant AS
SELECT f.tenant,
       coalesce(r.model, '') AS model,
       coalesce(last_call.deployment, '') AS deployment,
       r.variant,
       count(*) AS feedback_count,
       avg(f.score) AS mean_score,
       min(f.created_at) AS first_at,
       max(f.created_at) AS last_at
FROM feedback f
LEFT JOIN requests r ON r.id = f.request_id
LEFT JOIN LATERAL (
    SELECT u.deployment FROM usage_events u
    WHERE u.request_id = f.request_id
    ORDER BY u.finished_at DESC LIMIT 1
) last_call ON true
GROUP BY f.tenant, coalesce(r.model, ''), coalesce(last_call.deployment, ''), r.variant
"""


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("api_key_id", sa.Text(), nullable=True),
        sa.Column("batch_id", sa.Text(), nullable=True),
        sa.Column("custom_id", sa.Text(), nullable=True),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.CheckConstraint("score >= -1 AND score <= 1", name="ck_feedback_score"),
    )
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])
    op.create_index("ix_feedback_tenant_created_at", "feedback", ["tenant", "created_at"])
    op.execute(FEEDBACK_BY_VARIANT)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS feedback_by_variant")
    op.drop_index("ix_feedback_tenant_created_at", table_name="feedback")
    op.drop_index("ix_feedback_request_id", table_name="feedback")
    op.drop_table("feedback")
