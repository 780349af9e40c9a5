"""Guardrails: one row per guardrail decision, and the policies a key carries.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05

Workers screen prompts and answers (PII masking, prompt-injection screening, output rules)
just before the provider call; every decision travels on the final result and the ledger
writes it here in the same transaction as the result. A row names the policy, the rule and
the action, and how many matches there were -- never the matched text, so personal data
never reaches the database through this table. `api_keys.guardrails` lists the policies a
key adds to its model's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "guardrail_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), server_default="1", nullable=False),
        sa.Column("at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_guardrail_events"),
        # A redelivered result is the same decisions: one row per (request, policy, rule,
        # action, stage).
        sa.UniqueConstraint(
            "request_id", "policy", "rule", "action", "stage",
            name="uq_guardrail_events_decision",
        ),
    )
    op.create_index("ix_guardrail_events_tenant_at", "guardrail_events", ["tenant", "at"])
    op.add_column("api_keys", sa.Column("guardrails", postgresql.ARRAY(sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "guardrails")
    op.drop_index("ix_guardrail_events_tenant_at", table_name="guardrail_events")
    op.drop_table("guardrail_events")
