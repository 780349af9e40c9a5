"""Identity and roles: a role on every API key; IP allow and deny lists per tenant and key.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05

- `api_keys.role`: what the key may do (README "Identity and roles"): `admin`,
  `tenant_admin`, `member` or `analyst`. Existing keys become `member`, which is what they
  could do before; the admin key is configured apart and stays `admin`.
- `api_keys.ip_allow`, `api_keys.ip_deny`, `tenants.ip_allow`, `tenants.ip_deny`: CIDRs
  checked at authentication (null: no list). Text, not `cidr[]`: the edge parses them once
  per cached key, and a text array keeps IPv4-mapped and IPv6 forms exactly as written.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = "role IN ('admin', 'tenant_admin', 'member', 'analyst')"


def upgrade() -> None:
    # A constant default: PostgreSQL 11+ stores it in the catalog, no table rewrite.
    op.add_column("api_keys", sa.Column("role", sa.Text(), nullable=False,
                                        server_default="member"))
    op.create_check_constraint("ck_api_keys_role", "api_keys", ROLES)
    for table in ("api_keys", "tenants"):
        op.add_column(table, sa.Column("ip_allow", ARRAY(sa.Text()), nullable=True))
        op.add_column(table, sa.Column("ip_deny", ARRAY(sa.Text()), nullable=True))


def downgrade() -> None:
    for table in ("tenants", "api_keys"):
        op.drop_column(table, "ip_deny")
        op.drop_column(table, "ip_allow")
    op.drop_constraint("ck_api_keys_role", "api_keys", type_="check")
    op.drop_column("api_keys", "role")
