"""OpenAI Batch API: files (metadata and PostgreSQL-stored content), batches, batch lines.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def _at(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, TIMESTAMP, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "batch_files",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("storage", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_batch_files"),
    )
    op.create_index("ix_batch_files_tenant_created_at", "batch_files", ["tenant", "created_at"])
    op.create_table(
        "batch_file_chunks",
        sa.Column("file_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("file_id", "seq", name="pk_batch_file_chunks"),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("api_key_id", sa.Text(), nullable=True),
        sa.Column("models", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("input_file_id", sa.Text(), nullable=False),
        sa.Column("completion_window", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("output_file_id", sa.Text(), nullable=True),
        sa.Column("error_file_id", sa.Text(), nullable=True),
        sa.Column("errors", postgresql.JSONB(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(), nullable=True),
        sa.Column("total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("completed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        _at("claimed_at"),
        _at("cancels_sent_at"),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        _at("expires_at", nullable=False),
        *(_at(name) for name in ("in_progress_at", "finalizing_at", "completed_at", "failed_at",
                                 "expired_at", "cancelling_at", "cancelled_at")),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
        sa.CheckConstraint(
            "status IN ('validating', 'failed', 'in_progress', 'finalizing', 'completed', "
            "'expired', 'cancelling', 'cancelled')", name="ck_batches_status"),
    )
    op.create_index("ix_batches_tenant_created_at", "batches", ["tenant", "created_at"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_requests",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("body", postgresql.JSONB(), nullable=True),
        _at("finished_at"),
        sa.PrimaryKeyConstraint("request_id", name="pk_batch_requests"),
        sa.CheckConstraint(
            "status IN ('queued', 'succeeded', 'failed', 'expired', 'cancelled')",
            name="ck_batch_requests_status"),
    )
    op.create_index("ix_batch_requests_batch_id_status", "batch_requests",
                    ["batch_id", "status"])


def downgrade() -> None:
    op.drop_table("batch_requests")
    op.drop_table("batches")
    op.drop_table("batch_file_chunks")
    op.drop_table("batch_files")
