"""Webhook tables: tenant secrets, endpoints, deliveries and every attempt.

They share `broker.stores.tables.metadata`, so `test_migrations_match_tables` compares them with
migration 0004 like every other table.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
)

from broker.stores.tables import metadata, timestamp_column

DELIVERY_STATES = ("pending", "succeeded", "failed")



webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    # Kept in plaintext: HMAC signing needs the key itself (unlike API keys, only hashed).
    Column("secret", Text, nullable=False),
    timestamp_column("created_at", now=True),
    # Set by rotation: the old secret keeps signing until then, so receivers can switch.
    timestamp_column("expires_at", nullable=True),
    Index(None, "tenant"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("url", Text, nullable=False),
    # True: registered, receives every final result of the tenant. False: a URL named only
    # by requests (X-Webhook-URL), remembered here because a 410 disabled it.
    Column("subscribed", Boolean, nullable=False, server_default="true"),
    Column("description", Text, nullable=True),
    timestamp_column("created_at", now=True),
    timestamp_column("disabled_at", nullable=True),
    Column("disabled_reason", Text, nullable=True),
    UniqueConstraint("tenant", "url"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    # Also the `webhook-id` header: derived from (request id, url), so a redelivered result
    # is the same row and receivers can deduplicate on it.
    Column("id", Text, primary_key=True),
    Column("request_id", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    # The exact bytes signed and sent, on every attempt.
    Column("payload", Text, nullable=False),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # Attempts allowed in total; a redelivery raises it by `max_attempts`.
    Column("attempt_limit", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    timestamp_column("next_attempt_at"),
    # A deliverer owns an attempt until then (several deliverers may run).
    timestamp_column("leased_until", nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    timestamp_column("created_at", now=True),
    timestamp_column("updated_at", now=True),
    timestamp_column("finished_at", nullable=True),
    CheckConstraint("state IN ('pending', 'succeeded', 'failed')", name="state"),
    Index(None, "state", "next_attempt_at"),
    Index(None, "tenant", "created_at"),
    Index(None, "request_id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("delivery_id", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("url", Text, nullable=False),
    # The pinned address we connected to (None: refused or unresolvable before connecting).
    Column("address", Text, nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    timestamp_column("started_at"),
    timestamp_column("finished_at"),
    Column("duration_ms", Double, nullable=False),
    UniqueConstraint("delivery_id", "attempt"),
    Index(None, "tenant", "started_at"),
)
