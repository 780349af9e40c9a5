"""Drop the usage_events indexes no query reads any more, for write throughput.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28

Since 0008, reports and the views read `usage_rollup` for whole days and `usage_events`
only for the partial days at the ends of a range (by `finished_at`, optionally with the
tenant). `(model, finished_at)` and `(api_key_id, finished_at)` served the old
per-row reports; every ledger insert still paid for them: 20 % of the write throughput in
`sluice bench ledger` (docs/BENCHMARKS.md). Ad hoc SQL by model or key reads
`usage_daily`; a query over raw rows uses the `finished_at` index.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_usage_events_model_finished_at", table_name="usage_events")
    op.drop_index("ix_usage_events_api_key_id_finished_at", table_name="usage_events")


def downgrade() -> None:
    op.create_index("ix_usage_events_api_key_id_finished_at", "usage_events",
                    ["api_key_id", "finished_at"])
    op.create_index("ix_usage_events_model_finished_at", "usage_events",
                    ["model", "finished_at"])
