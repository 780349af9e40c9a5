"""Routing in the ledger: the alias asked for, the A/B or canary variant, shadow copies.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05

- `requests.requested_model`: the name the caller asked for when it was an alias
  (`aliases:` in the config); `requests.model` stays the model that served it, so every
  existing report keeps grouping by served model.
- `requests.variant` and `usage_events.variant`: the routing variant the request was
  assigned (an A/B variant's name, `canary`, `stable`, or `shadow` for a shadow copy).
- `requests.shadow_of`: on a shadow copy's row, the id of the request it mirrors (the copy
  runs under the internal shadow tenant; join the two rows to compare answers).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding them rewrites nothing (a catalog change only).
    op.add_column("requests", sa.Column("requested_model", sa.Text(), nullable=True))
    op.add_column("requests", sa.Column("variant", sa.Text(), nullable=True))
    op.add_column("requests", sa.Column("shadow_of", sa.Text(), nullable=True))
    op.add_column("usage_events", sa.Column("variant", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("usage_events", "variant")
    op.drop_column("requests", "shadow_of")
    op.drop_column("requests", "variant")
    op.drop_column("requests", "requested_model")
