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
from typing import Any, cast

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.errors import AccessNotApproved, DatabaseUnavailable, InvalidRequest
from broker.identity.config import ROLES, Role
from broker.identity.networks import IpNetwork, parse_network
from broker.stores.database import database_errors
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


@dataclass(frozen=True, slots=True)
class IpLists:
    """A tenant's or a key's own lists, as stored (None: no list)."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] | None = None


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
def networks(cidrs: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """`cidrs` parsed (once per distinct list); IPv4-mapped entries stored before they were
    normalised (`::ffff:203.0.113.7/128`) still match their IPv4 callers."""
    return tuple(parse_network(cidr) for cidr in cidrs)


def checked_cidrs(cidrs: Sequence[str] | None, param: str) -> list[str] | None:
    """`cidrs` normalised (`10.0.0.0/8`; `::ffff:203.0.113.7` is `203.0.113.7/32`, the form
    `peer_ip` matches), or `InvalidRequest` naming the bad one."""
    if cidrs is None:
        return None
    normalised = []
    for cidr in cidrs:
        try:
            normalised.append(str(parse_network(cidr)))
        except ValueError as exc:
            raise InvalidRequest(f"'{cidr}' is not an IP address or CIDR.", param=param) from exc
    return normalised


def checked_role(role: str) -> Role:
    """`role` if it is one of ours, else `InvalidRequest`."""
    for known in ROLES:
        if role == known:
            return known
    raise InvalidRequest(f"Unknown role '{role}' (one of {', '.join(ROLES)}).", param="role")


async def update_key_access(engine: AsyncEngine, key_id: str,
                            changes: dict[str, object]) -> bool:
    """Store the `role`, `ip_allow` and `ip_deny` present in `changes` (already checked with
    `key_access_changes`); False if there is no such key."""
    if not changes:
        return True
    statement = (update(api_keys).where(api_keys.c.id == key_id).values(**changes)
                 .returning(api_keys.c.id))
    with database_errors(engine):
        async with engine.begin() as connection:
            return (await connection.execute(statement)).one_or_none() is not None


def key_access_changes(fields: dict[str, object], *, current_role: str,
                       scope: str | None) -> dict[str, object]:
    """Take `role`, `ip_allow` and `ip_deny` out of a key change (`PATCH
    /v1/admin/keys/{id}`) and check them: lists normalised (null or [] clears one), the
    role one of ours. A tenant admin (`scope` set) may neither grant `admin` nor touch a
    key that has it: it could not have made that key either.

    Raises:
        InvalidRequest: an unknown or null role, or an entry that is not a CIDR.
        AccessNotApproved: `insufficient_role`, for the tenant admin's cases above.
    """
    if scope is not None and current_role == "admin":
        raise AccessNotApproved("Only the admin may change keys with the role 'admin'.",
                                code="insufficient_role")
    changes: dict[str, object] = {}
    if "role" in fields:
        role = fields.pop("role")
        if not isinstance(role, str):
            raise InvalidRequest("role cannot be null (one of "
                                 f"{', '.join(ROLES)}).", param="role")
        changes["role"] = granted_role(role, scope=scope)
    for name in ("ip_allow", "ip_deny"):
        if name in fields:
            cidrs = checked_cidrs(cast("list[str] | None", fields.pop(name)), name)
            changes[name] = cidrs or None
    return changes


async def apply_tenant_ip_fields(engine: AsyncEngine, tenant: str,
                                 fields: dict[str, object]) -> dict[str, object]:
    """Take `ip_allow`/`ip_deny` out of a tenant change (`PUT /v1/admin/tenants/{name}`)
    and store those present (null clears a list); returns the tenant's lists as the admin
    API shows them."""
    changes: dict[str, list[str] | None] = {
        name: cast("list[str] | None", fields.pop(name))
        for name in ("ip_allow", "ip_deny") if name in fields}
    return ip_lists_body(await set_tenant_ip_lists(engine, tenant, changes))


async def set_tenant_ip_lists(engine: AsyncEngine, tenant: str,
                              changes: dict[str, list[str] | None]) -> IpLists:
    """Store the `ip_allow`/`ip_deny` lists in `changes` (None or [] clears one) for
    `tenant`, creating its row if needed; returns its lists.

    Raises:
        InvalidRequest: an entry is not an address or CIDR (nothing is stored).
    """
    values = {name: checked_cidrs(cidrs, name) or None for name, cidrs in changes.items()}
    statement = insert(tenants).values(name=tenant, **values)
    statement = (statement.on_conflict_do_update(index_elements=[tenants.c.name], set_=values)
                 if values else statement.on_conflict_do_nothing())
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(statement)
            row = (await connection.execute(select(tenants.c.ip_allow, tenants.c.ip_deny)
                                            .where(tenants.c.name == tenant))).one()
    return _ip_lists(row)


async def tenant_ip_lists(engine: AsyncEngine) -> dict[str, IpLists]:
    """The IP lists of every tenant that has one, by tenant name."""
    statement = select(tenants.c.name, tenants.c.ip_allow, tenants.c.ip_deny).where(
        or_(tenants.c.ip_allow.is_not(None), tenants.c.ip_deny.is_not(None)))
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return {row.name: _ip_lists(row) for row in rows}


def _ip_lists(row: Any) -> IpLists:  # a Row with ip_allow and ip_deny
    return IpLists(tuple(row.ip_allow) if row.ip_allow else None,
                   tuple(row.ip_deny) if row.ip_deny else None)


def ip_lists_body(lists: IpLists | None) -> dict[str, object]:
    """`ip_allow` and `ip_deny` as the admin API shows them (null: no list)."""
    return {"ip_allow": list(lists.allow) if lists and lists.allow else None,
            "ip_deny": list(lists.deny) if lists and lists.deny else None}


def describe_ip_lists(allow: Sequence[str] | None, deny: Sequence[str] | None) -> str:
    """`allow 10.0.0.0/8 · deny 10.9.0.0/16` for people, or "-" without lists."""
    parts = ([f"allow {','.join(allow)}"] if allow else []) + (
        [f"deny {','.join(deny)}"] if deny else [])
    return " · ".join(parts) or "-"


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

    def forget(self, tenant: str, key_id: str | None = None) -> None:
        """Drop the cached access of `key_id` of `tenant` (None: every entry of the tenant):
        a change made through this process takes effect here at once, not within `ttl_s`."""
        for entry_key in [entry_key for entry_key in self._entries if entry_key[0] == tenant
                          and (key_id is None or entry_key[1] == key_id)]:
            del self._entries[entry_key]


def granted_role(role: str, *, scope: str | None) -> Role:
    """`role` checked, as a caller of `scope` may hand it out: a tenant admin (`scope` set)
    any role but `admin`."""
    checked = checked_role(role)
    if scope is not None and checked == "admin":
        raise AccessNotApproved("Only the admin may give keys the role 'admin'.",
                                code="insufficient_role")
    return checked


def key_access_of(role: str, ip_allow: Sequence[str] | None, ip_deny: Sequence[str] | None, *,
                  scope: str | None) -> Access:
    """A new key's role and IP lists, checked before the key exists: a tenant admin
    (`scope` set) may hand out any role but `admin`."""
    allow = checked_cidrs(ip_allow, "ip_allow")
    deny = checked_cidrs(ip_deny, "ip_deny")
    return Access(role=granted_role(role, scope=scope),
                  allow_lists=(tuple(allow),) if allow else (), deny=tuple(deny or ()))
