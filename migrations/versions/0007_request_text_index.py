"""Privacy: a partial index of the requests that still hold prompt or completion text.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

The ledger removes that text for tenants without `store_content` once the retention has
passed (`workers.ledger.retention`). Indexing only the rows that still hold text lets each
sweep read what is due, never the rows it already cleaned. The predicate is copied here,
not imported (a migration must not change when the code does); it must stay the same text
as `broker.stores.tables.REQUEST_HAS_TEXT`, or PostgreSQL will not use the index for the sweep.

Built without CONCURRENTLY (migrations run in one transaction): on a large `requests`
table this blocks writes to it while PostgreSQL scans it once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_TEXT = "prompt IS NOT NULL OR result @? '$.completion.choices[*].message.content'"


def upgrade() -> None:
    op.create_index(
        "ix_requests_text_updated_at",
        "requests",
        ["updated_at"],
        postgresql_where=sa.text(HAS_TEXT),
    )


def downgrade() -> None:
    op.drop_index("ix_requests_text_updated_at", table_name="requests")
