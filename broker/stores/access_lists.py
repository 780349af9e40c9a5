"""Roles and IP lists of API keys and tenants (migration 0020; README "Identity and roles").

Kept beside the key store rather than in it: the edge reads them through `AccessCache`
(one dictionary lookup per request once warm), so key lookups themselves stay as they were.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.errors import AccessNotApproved, DatabaseUnavailable, InvalidRequest
from broker.identity.config import ROLES, Role
from broker.stores.database import database_errors
from broker.stores.keys import revoke_api_key
from broker.stores.tables import api_keys, tenants


@dataclass(frozen=True, slots=True)
class Access:
    """What a key (or a JWT's tenant) may do, and from where.

    Every allow list given (the tenant's, the key's) must admit an address, and no deny
    list may hold it: a key can narrow its tenant's lists, never widen them.
    """

    role: Role = "member"
    allow_lists: tuple[tuple[str, ...], ...] = ()
    deny: tuple[str, ...] = ()

    def admits(self, address: str) -> bool:
        """Whether a caller at `address` passes these lists (no lists: everyone)."""
        if not self.allow_lists and not self.deny:
            return True
        ip = peer_ip(address)
        if ip is None:
            return False  # no usable peer address (a Unix socket): lists refuse it
        if any(ip in network for network in networks(self.deny)):
            return False
        return all(any(ip in network for network in networks(allow))
                   for allow in self.allow_lists)


def peer_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`address` as an IP; an IPv4 client on a dual-stack socket (`::ffff:1.2.3.4`) is its
    IPv4 address, so IPv4 rules match it (an IPv6 address is never in an IPv4 network)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=1024)
def networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                               ...]:
    """`cidrs` parsed (once per distinct list)."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def checked_cidrs(cidrs: Sequence[str] | None, param: str) -> list[str] | None:
    """`cidrs` normalised (`10.0.0.0/8`), or `InvalidRequest` naming the bad one."""
    if cidrs is None:
        return None
    normalised = []
    for cidr in cidrs:
        try:
            normalised.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
        except ValueError as exc:
            raise InvalidRequest(f"'{cidr}' is not an IP address or CIDR.", param=param) from exc
    return normalised


def checked_role(role: str) -> Role:
    """`role` if it is one of ours, else `InvalidRequest`."""
    for known in ROLES:
        if role == known:
            return known
    raise InvalidRequest(f"Unknown role '{role}' (one of {', '.join(ROLES)}).", param="role")


async def set_key_access(engine: AsyncEngine, key_id: str, *, role: Role,
                         ip_allow: Sequence[str] | None = None,
                         ip_deny: Sequence[str] | None = None) -> bool:
    """Store a key's role and IP lists; False if there is no such key."""
    statement = (update(api_keys).where(api_keys.c.id == key_id)
                 .values(role=role, ip_allow=checked_cidrs(ip_allow, "ip_allow"),
                         ip_deny=checked_cidrs(ip_deny, "ip_deny"))
                 .returning(api_keys.c.id))
    with database_errors(engine):
        async with engine.begin() as connection:
            return (await connection.execute(statement)).one_or_none() is not None


async def apply_tenant_ip_fields(engine: AsyncEngine, tenant: str,
                                 fields: dict[str, object]) -> dict[str, object]:
    """Take `ip_allow`/`ip_deny` out of a tenant change (`PUT /v1/admin/tenants/{name}`)
    and store those present (null clears a list); returns the tenant's lists as stored."""
    values = {name: checked_cidrs(cast("list[str] | None", fields.pop(name)), name)
              for name in ("ip_allow", "ip_deny") if name in fields}
    statement = insert(tenants).values(name=tenant, **values)
    statement = (statement.on_conflict_do_update(index_elements=[tenants.c.name], set_=values)
                 if values else statement.on_conflict_do_nothing())
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(statement)
            row = (await connection.execute(select(tenants.c.ip_allow, tenants.c.ip_deny)
                                            .where(tenants.c.name == tenant))).one()
    return {"ip_allow": row.ip_allow, "ip_deny": row.ip_deny}


async def access_of(engine: AsyncEngine, tenant: str, key_id: str | None) -> Access:
    """The role of key `key_id` (None: a token caller, role from its token) and the IP
    lists of the key and its tenant."""
    tenant_row = select(tenants.c.ip_allow, tenants.c.ip_deny).where(tenants.c.name == tenant)
    with database_errors(engine):
        async with engine.connect() as connection:
            tenant_lists = (await connection.execute(tenant_row)).one_or_none()
            key_row = None
            if key_id is not None:
                key_row = (await connection.execute(
                    select(api_keys.c.role, api_keys.c.ip_allow, api_keys.c.ip_deny)
                    .where(api_keys.c.id == key_id))).one_or_none()
    rows = [row for row in (tenant_lists, key_row) if row is not None]
    role = checked_role(key_row.role) if key_row is not None else "member"
    return Access(role=role,
                  allow_lists=tuple(tuple(row.ip_allow) for row in rows if row.ip_allow),
                  deny=tuple(cidr for row in rows for cidr in row.ip_deny or ()))


class AccessCache:
    """`access_of` behind a TTL cache keyed by key id (or tenant for JWT callers).

    Changes take effect within `ttl_s`, like revocations in the key cache; while PostgreSQL
    is away a known entry keeps serving.
    """

    def __init__(self, engine: AsyncEngine, *, ttl_s: float = 30.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str | None], tuple[float, Access]] = \
            OrderedDict()

    async def get(self, tenant: str, key_id: str | None) -> Access:
        """The access of key `key_id` of `tenant` (None: a token caller of `tenant`)."""
        entry_key = (tenant, key_id)
        entry = self._entries.get(entry_key)
        now = self._clock()
        if entry is not None and now < entry[0]:
            return entry[1]
        try:
            access = await access_of(self._engine, tenant, key_id)
        except DatabaseUnavailable:
            if entry is not None:
                return entry[1]
            raise
        self._entries[entry_key] = (now + self._ttl_s, access)
        self._entries.move_to_end(entry_key)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return access


def key_access_of(role: str, ip_allow: Sequence[str] | None, ip_deny: Sequence[str] | None, *,
                  scope: str | None) -> Access:
    """A new key's role and IP lists, checked before the key exists: a tenant admin
    (`scope` set) may hand out any role but `admin`."""
    checked = checked_role(role)
    if scope is not None and checked == "admin":
        raise AccessNotApproved("Only the admin may create keys with the role 'admin'.",
                                code="insufficient_role")
    allow = checked_cidrs(ip_allow, "ip_allow")
    deny = checked_cidrs(ip_deny, "ip_deny")
    return Access(role=checked, allow_lists=(tuple(allow),) if allow else (),
                  deny=tuple(deny or ()))


async def store_key_access(engine: AsyncEngine, key_id: str, access: Access) -> None:
    """Store a just-created key's access; if that fails the key is revoked, so no key
    lives with more rights (or fewer address limits) than it was created with."""
    try:
        await set_key_access(engine, key_id, role=access.role,
                             ip_allow=access.allow_lists[0] if access.allow_lists else None,
                             ip_deny=access.deny or None)
    except BaseException:
        await revoke_api_key(engine, key_id)
        raise


def access_body(access: Access) -> dict[str, object]:
    """A key's access as the admin API shows it."""
    return {"role": access.role,
            "ip_allow": list(access.allow_lists[0]) if access.allow_lists else None,
            "ip_deny": list(access.deny) or None}
