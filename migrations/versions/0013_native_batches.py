"""The native batch lane: chunks of batch lines sent to a provider's own batch API.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08

A model whose first deployment has `batch: native` has its batch lines sent to the
provider's batch API (OpenAI `/v1/batches`, Anthropic Message Batches) rather than to its
batch topic. `native_batch_lines` keeps each such line's upstream request until it is
submitted and the chunk it went into; `native_batch_chunks` is one upstream batch, with the
provider's ids recorded before anything depends on them (see `workers.batches.native`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def _at(name: str) -> sa.Column[object]:
    return sa.Column(name, TIMESTAMP, nullable=True)


def upgrade() -> None:
    op.create_table(
        "native_batch_chunks",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("deployment", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("upstream_file_id", sa.Text(), nullable=True),
        sa.Column("upstream_batch_id", sa.Text(), nullable=True),
        sa.Column("upstream_status", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _at("claimed_at"),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        _at("submit_started_at"),
        _at("submitted_at"),
        _at("polled_at"),
        _at("cancel_sent_at"),
        _at("ended_at"),
        _at("done_at"),
        sa.CheckConstraint("state IN ('pending', 'submitting', 'running', 'ended', 'done')",
                           name="ck_native_batch_chunks_state"),
        sa.PrimaryKeyConstraint("id", name="pk_native_batch_chunks"),
    )
    op.create_index("ix_native_batch_chunks_batch_id", "native_batch_chunks", ["batch_id"])
    op.create_index("ix_native_batch_chunks_state", "native_batch_chunks", ["state"])
    op.create_table(
        "native_batch_lines",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("deployment", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("chunk_id", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_native_batch_lines"),
    )
    op.create_index("ix_native_batch_lines_batch_id_deployment_line", "native_batch_lines",
                    ["batch_id", "deployment", "line"])
    op.create_index("ix_native_batch_lines_chunk_id", "native_batch_lines", ["chunk_id"])


def downgrade() -> None:
    op.drop_index("ix_native_batch_lines_chunk_id", table_name="native_batch_lines")
    op.drop_index("ix_native_batch_lines_batch_id_deployment_line",
                  table_name="native_batch_lines")
    op.drop_table("native_batch_lines")
    op.drop_index("ix_native_batch_chunks_state", table_name="native_batch_chunks")
    op.drop_index("ix_native_batch_chunks_batch_id", table_name="native_batch_chunks")
    op.drop_table("native_batch_chunks")
