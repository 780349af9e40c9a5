"""The `budget_state` table (migration 0003): one row per deployment with a budget.

It shares `broker.stores.tables.metadata` so `test_migrations_match_tables` compares it with the
migration. Only the SQL functions of migration 0003 and `PostgresBudgetStore` write it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Double, Table, Text
from sqlalchemy.dialects.postgresql import ARRAY

from broker.stores.tables import metadata

budget_state = Table(
    "budget_state",
    metadata,
    Column("deployment", Text, primary_key=True),
    # Seconds since the epoch on the database's clock (the one clock every worker shares).
    Column("updated_at", Double, nullable=False),
    Column("levels", ARRAY(Double), server_default="{0,0,0,0}", nullable=False),
    Column("leases", ARRAY(Double), server_default="{}", nullable=False),
    Column("reserved", ARRAY(Double), server_default="{0,0,0,0}", nullable=False),
    Column("used", ARRAY(Double), server_default="{0,0,0,0}", nullable=False),
    Column("learned", ARRAY(Double), server_default="{0,0,0,0}", nullable=False),
    Column("blocked_until", Double, server_default="0", nullable=False),
    Column("scale", Double, server_default="1", nullable=False),
    Column("scale_at", Double, nullable=False),
    Column("requests_granted", BigInteger, server_default="0", nullable=False),
    Column("rate_limited", BigInteger, server_default="0", nullable=False),
)
