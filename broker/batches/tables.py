"""Batch tables: uploaded files (metadata and, when stored in PostgreSQL, content), batches,
and one row per batch line.

They share `broker.stores.tables.metadata`, so `test_migrations_match_tables` compares them with
migration 0005 like every other table.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    LargeBinary,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from broker.stores.tables import metadata, timestamp_column

BATCH_STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired",
                  "cancelling", "cancelled")
LINE_STATUSES = ("queued", "succeeded", "failed", "expired", "cancelled")



batch_files = Table(
    "batch_files",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    # Where the content lives: 'postgres' (batch_file_chunks) or 'disk'.
    Column("storage", Text, nullable=False),
    timestamp_column("created_at", nullable=False, now=True),
    Index(None, "tenant", "created_at"),
)

# Content of files stored in PostgreSQL, in chunks of about 1 MiB: streamed, never whole.
batch_file_chunks = Table(
    "batch_file_chunks",
    metadata,
    Column("file_id", Text, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("api_key_id", Text, nullable=True),
    # Models this batch's lines may name (the configured ones the key may call).
    Column("models", ARRAY(Text), nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("input_file_id", Text, nullable=False),
    Column("completion_window", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("output_file_id", Text, nullable=True),
    Column("error_file_id", Text, nullable=True),
    Column("errors", JSONB, nullable=True),
    Column("metadata", JSONB, nullable=True),
    # While `validating`: the lines launched so far (a relaunch resumes after them).
    Column("total", Integer, nullable=False, server_default="0"),
    Column("completed", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    # A tracker working on this batch (launching or finalizing); stale claims are retaken.
    timestamp_column("claimed_at", nullable=True),
    timestamp_column("cancels_sent_at", nullable=True),
    timestamp_column("created_at", nullable=False, now=True),
    timestamp_column("expires_at", nullable=False),
    timestamp_column("in_progress_at", nullable=True),
    timestamp_column("finalizing_at", nullable=True),
    timestamp_column("completed_at", nullable=True),
    timestamp_column("failed_at", nullable=True),
    timestamp_column("expired_at", nullable=True),
    timestamp_column("cancelling_at", nullable=True),
    timestamp_column("cancelled_at", nullable=True),
    CheckConstraint("status IN ('validating', 'failed', 'in_progress', 'finalizing', "
                    "'completed', 'expired', 'cancelling', 'cancelled')", name="status"),
    Index(None, "tenant", "created_at"),
    Index(None, "status"),
)

batch_requests = Table(
    "batch_requests",
    metadata,
    # Deterministic per (batch, line), so a relaunch after a crash inserts nothing twice.
    Column("request_id", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("line", Integer, nullable=False),
    Column("custom_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    # HTTP status and body of the answer (completion or error envelope); null while queued.
    Column("status_code", Integer, nullable=True),
    Column("body", JSONB, nullable=True),
    timestamp_column("finished_at", nullable=True),
    CheckConstraint("status IN ('queued', 'succeeded', 'failed', 'expired', 'cancelled')",
                    name="status"),
    Index(None, "batch_id", "status"),
)

# The native batch lane (`workers.batches.native`): lines of models whose first deployment
# has `batch: native` go to the provider's own batch API instead of the batch topic.
NATIVE_CHUNK_STATES = ("pending", "submitting", "running", "ended", "done")

# One upstream batch (OpenAI `/v1/batches`, Anthropic Message Batches) per chunk of lines.
# The row exists, with its lines assigned, before anything is sent; `submit_started_at` is
# set (committed) before the provider is called, and its ids are recorded as it answers, so
# a restarted tracker knows whether the provider may already have the chunk.
native_batch_chunks = Table(
    "native_batch_chunks",
    metadata,
    Column("id", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("deployment", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("lines", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    # pending: not sent; submitting: maybe sent (outcome unknown until recorded or found);
    # running: the upstream batch id is recorded; ended: the upstream batch is over, its
    # results not all published yet; done: every line's final result is published.
    Column("state", Text, nullable=False),
    Column("upstream_file_id", Text, nullable=True),
    Column("upstream_batch_id", Text, nullable=True),
    Column("upstream_status", Text, nullable=True),
    # Why the upstream batch failed as a whole (its validation errors), for every line.
    Column("error", Text, nullable=True),
    timestamp_column("claimed_at", nullable=True),
    timestamp_column("created_at", nullable=False, now=True),
    timestamp_column("submit_started_at", nullable=True),
    timestamp_column("submitted_at", nullable=True),
    timestamp_column("polled_at", nullable=True),
    timestamp_column("cancel_sent_at", nullable=True),
    timestamp_column("ended_at", nullable=True),
    timestamp_column("done_at", nullable=True),
    CheckConstraint("state IN ('pending', 'submitting', 'running', 'ended', 'done')",
                    name="state"),
    Index(None, "batch_id"),
    Index(None, "state"),
)

# Each native line: its upstream request (the provider's own line format, ready to send;
# dropped once its chunk is submitted) and the chunk it went into (NULL until assigned).
native_batch_lines = Table(
    "native_batch_lines",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("deployment", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("line", Integer, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=True),
    Column("chunk_id", Text, nullable=True),
    timestamp_column("created_at", nullable=False, now=True),
    Index(None, "batch_id", "deployment", "line"),
    Index(None, "chunk_id"),
)
