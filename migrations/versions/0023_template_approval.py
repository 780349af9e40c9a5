"""Prompt templates that require approval before use.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-05

- `prompt_templates.requires_approval`: a template whose latest version sets it can be
  called (over HTTP or as a batch line) only by keys or tenants granted
  `template:<name>` (README "Access approval"). It is the latest version that decides, so
  pinning an older version cannot get around a requirement added later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL records it in the catalog, no table rewrite.
    op.add_column("prompt_templates", sa.Column(
        "requires_approval", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column("prompt_templates", "requires_approval")
