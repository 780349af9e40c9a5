"""Prompt templates: versioned chat prompts served as APIs, and which one a request used.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05

- `prompt_templates`: one row per (name, version). A version never changes once written;
  an update is a new row with the next version (README "Prompt templates").
- `requests.template` and `requests.template_version`: the template and version a request
  was rendered from (null for requests that name their messages themselves).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prompt_templates",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("messages", postgresql.JSONB(), nullable=False),
        sa.Column("parameters", postgresql.JSONB(), nullable=False),
        sa.Column("variables", postgresql.JSONB(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_prompt_templates"),
        sa.CheckConstraint("version >= 1", name="ck_prompt_templates_version"),
    )
    # Nullable, no default: adding them rewrites nothing (a catalog change only).
    op.add_column("requests", sa.Column("template", sa.Text(), nullable=True))
    op.add_column("requests", sa.Column("template_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("requests", "template_version")
    op.drop_column("requests", "template")
    op.drop_table("prompt_templates")
