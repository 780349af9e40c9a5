"""Record reasoning tokens in their own usage column.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

Reasoning models (o-series, GPT-5) report `usage.completion_tokens_details.
reasoning_tokens`: tokens the model spent thinking, counted inside `completion_tokens` and
billed at the output price. Analysts asking "how much of our spend is thinking?" need them
apart, as `cached_input_tokens` already is for prompt-cache hits.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_events", sa.Column(
        "reasoning_output_tokens", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("usage_events", "reasoning_output_tokens")
