"""Response cache: answers kept for identical (or, opt-in, similar) requests; hits in usage.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05

`response_cache` holds one answer per exact cache key (a hash of tenant, model and every
parameter that can change the answer, `broker.caching.keys`). The ledger writes a row when
it records the succeeded result of a request of a model with caching on; ingress reads it
(through an in-process LRU) before admission and Kafka. Rows of a model with the semantic
cache also carry `rest_hash` (everything but the last user turn) and `embedding` (the last
user turn's all-MiniLM-L6-v2 vector, 384 float32 little-endian, L2-normalised) for the
in-process similarity index. pgvector would make `embedding` a `vector(384)` with an HNSW
index; it is not available for the embedded PostgreSQL 18, so vectors are plain bytes here.

`usage_events.cache` marks a call answered from the cache (`hit`, `semantic-hit`): its
provider is `cache`, its tokens and cost are zero, and `saved_input_tokens` /
`saved_output_tokens` say what the original call used, so "what did the cache save?" is a
SUM and no budget or rollup counts a hit as spend.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "response_cache",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("rest_hash", sa.Text(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("completion", postgresql.JSONB(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_response_cache"),
    )
    op.create_index("ix_response_cache_tenant_model_rest_hash", "response_cache",
                    ["tenant", "model", "rest_hash"])
    op.create_index("ix_response_cache_expires_at", "response_cache", ["expires_at"])
    op.add_column("usage_events", sa.Column("cache", sa.Text(), nullable=True))
    op.add_column("usage_events", sa.Column(
        "saved_input_tokens", sa.Integer(), server_default="0", nullable=False))
    op.add_column("usage_events", sa.Column(
        "saved_output_tokens", sa.Integer(), server_default="0", nullable=False))
    op.create_check_constraint(
        "ck_usage_events_cache", "usage_events", "cache IN ('hit', 'semantic-hit')")


def downgrade() -> None:
    op.drop_constraint("ck_usage_events_cache", "usage_events", type_="check")
    op.drop_column("usage_events", "saved_output_tokens")
    op.drop_column("usage_events", "saved_input_tokens")
    op.drop_column("usage_events", "cache")
    op.drop_index("ix_response_cache_expires_at", table_name="response_cache")
    op.drop_index("ix_response_cache_tenant_model_rest_hash", table_name="response_cache")
    op.drop_table("response_cache")
