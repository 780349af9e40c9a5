"""Access approval: requests to use a model or template that requires approval, and their audit.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05

- `access_grants`: one row per (tenant, key, resource) request; `key_id` is '' for a
  tenant-wide request (a real column, not NULL, so the unique constraint holds). `status`
  moves pending -> approved | denied; a denied or approved row may be requested again
  (back to pending).
- `access_audit`: append-only; one row per request and per decision: who (the admin or the
  tenant key id), what, when and why.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "access_grants",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("decided_at", TIMESTAMP(timezone=True), nullable=True),
        sa.UniqueConstraint("tenant", "key_id", "resource", name="uq_access_grants_scope"),
    )
    op.create_table(
        "access_audit",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("grant_id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        # requested | approved | denied
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("at", TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
    )
    op.create_index("ix_access_audit_grant_id", "access_audit", ["grant_id"])
    # Append-only is a promise the database keeps, not a convention: refuse UPDATE/DELETE.
    op.execute(
        "CREATE FUNCTION access_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN RAISE EXCEPTION 'access_audit is append-only'; END$$"
    )
    op.execute(
        "CREATE TRIGGER access_audit_append_only BEFORE UPDATE OR DELETE ON access_audit "
        "FOR EACH ROW EXECUTE FUNCTION access_audit_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER access_audit_append_only ON access_audit")
    op.execute("DROP FUNCTION access_audit_append_only()")
    op.drop_index("ix_access_audit_grant_id", table_name="access_audit")
    op.drop_table("access_audit")
    op.drop_table("access_grants")
