"""Prices and usage for more than OpenAI: prompt-cache writes and providers' batch APIs.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

Anthropic bills input written to its prompt cache at its own price (1.25 x input for the
five-minute cache, 2 x input for the one-hour cache), and both OpenAI and Anthropic bill calls made through their batch
APIs at a discount (half price). The ledger records how many input tokens were cache
writes and whether a call went through a batch API (`service_tier`), and a price may name
its cache-write and batch rates; without them the ledger uses the providers' published
multipliers (see `broker.stores.prices.Price.cost`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(20, 10)
PRICE_COLUMNS = ("cache_write_input_usd_per_mtok", "cache_write_1h_input_usd_per_mtok",
                 "batch_input_usd_per_mtok", "batch_output_usd_per_mtok")


def upgrade() -> None:
    for column in ("cache_write_input_tokens", "cache_write_1h_input_tokens"):
        op.add_column("usage_events", sa.Column(
            column, sa.Integer(), server_default="0", nullable=False))
    op.add_column("usage_events", sa.Column(
        "service_tier", sa.Text(), server_default="standard", nullable=False))
    op.create_check_constraint(
        "ck_usage_events_service_tier", "usage_events",
        "service_tier in ('standard', 'batch')")
    for column in PRICE_COLUMNS:
        op.add_column("prices", sa.Column(column, MONEY, nullable=True))
        op.create_check_constraint(f"ck_prices_{column}_not_negative", "prices",
                                   f"{column} >= 0")


def downgrade() -> None:
    for column in PRICE_COLUMNS:
        op.drop_column("prices", column)
    for column in ("service_tier", "cache_write_1h_input_tokens", "cache_write_input_tokens"):
        op.drop_column("usage_events", column)
