"""Bodies of the key routes of the admin API (`/v1/admin/keys…`, routes in `ingress.admin`):
what a new key or a change may say, and how a key is shown.

A tenant admin acting through a key with limits hands out keys within them
(`require_within`): it cannot mint a key that escapes the limits an admin set on its own.

A key's role and IP lists (README "Identity and roles") and its budget-alert rule (README
"Budget alerts") are part of its body, so an operator sees in one listing what a key may
do, from where, and when it warns.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network, collapse_addresses
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from broker.errors import AccessNotApproved
from broker.identity.config import Role
from broker.stores.access_lists import Access, networks
from broker.stores.budget_alerts import AlertRule, FiredAlert, key_alert_fields
from broker.stores.keys import ApiKeyRecord, KeyLimits

Usd = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=10)]
# A daily spend alert of 0 would fire on the first cent of every day (the CLI refuses it
# too: "must be a positive amount"); null clears the alert instead.
PositiveUsd = Annotated[Decimal, Field(gt=0, max_digits=20, decimal_places=10)]
Percentages = list[Annotated[int, Field(ge=1, le=1000)]]


class NewKey(BaseModel):
    """Body of `POST /v1/admin/keys`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: Annotated[str, Field(min_length=1, max_length=200)]
    name: str | None = None
    models: list[str] | None = None
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    monthly_budget_usd: Usd | None = None
    monthly_budget_tokens: Annotated[int, Field(ge=0)] | None = None
    expires_at: AwareDatetime | None = None
    # Guardrail policy names (the config's `guardrails`), applied after the model's own.
    guardrails: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    # README "Identity and roles": what the key may do, and from which addresses.
    role: Role = "member"
    ip_allow: list[str] | None = None
    ip_deny: list[str] | None = None

    def limits(self, access: Access) -> KeyLimits:
        """The key's limits, with `access` (this body's role and lists, checked)."""
        return KeyLimits(
            models=frozenset(self.models) if self.models is not None else None,
            rpm=self.rpm, tpm=self.tpm, monthly_budget_usd=self.monthly_budget_usd,
            monthly_budget_tokens=self.monthly_budget_tokens, expires_at=self.expires_at,
            guardrails=tuple(dict.fromkeys(self.guardrails)) if self.guardrails else None,
            role=access.role, ip_allow=access.allow_lists[0] if access.allow_lists else None,
            ip_deny=access.deny or None,
        )


class KeyChange(BaseModel):
    """Body of `PATCH /v1/admin/keys/{id}`: fields present change; null clears a list or
    an alert setting (a role cannot be cleared)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role | None = None
    ip_allow: list[str] | None = None
    ip_deny: list[str] | None = None
    # README "Budget alerts": percentages of the key's monthly_budget_usd, USD per UTC day.
    alert_thresholds_pct: Percentages | None = None
    daily_spend_alert_usd: PositiveUsd | None = None

    def fields(self) -> dict[str, Any]:
        """The fields the body sets, by name (null ones included: they clear)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


def key_body(record: ApiKeyRecord) -> dict[str, Any]:
    """A key as the admin API shows it: never the secret or its hash."""
    limits = record.limits

    def when(moment: datetime | None) -> int | None:
        return int(moment.timestamp()) if moment is not None else None

    return {
        "id": record.id, "object": "api_key", "tenant": record.tenant, "name": record.name,
        "prefix": record.prefix, "created_at": when(record.created_at),
        "revoked_at": when(record.revoked_at), "last_used_at": when(record.last_used_at),
        "models": sorted(limits.models) if limits.models is not None else None,
        "rpm": limits.rpm, "tpm": limits.tpm,
        "monthly_budget_usd": str(limits.monthly_budget_usd)
        if limits.monthly_budget_usd is not None else None,
        "monthly_budget_tokens": limits.monthly_budget_tokens,
        "expires_at": when(limits.expires_at),
        "guardrails": list(limits.guardrails) if limits.guardrails else None,
        "role": limits.role,
        "ip_allow": list(limits.ip_allow) if limits.ip_allow else None,
        "ip_deny": list(limits.ip_deny) if limits.ip_deny else None,
    }


def key_body_with_alerts(record: ApiKeyRecord, rule: AlertRule | None,
                         last: FiredAlert | None) -> dict[str, Any]:
    """`key_body` with the key's alert rule and latest alert (README "Budget alerts")."""
    return key_body(record) | key_alert_fields(rule, last)


BOUNDED = ("models", "rpm", "tpm", "monthly_budget_usd", "monthly_budget_tokens",
           "expires_at", "guardrails", "ip_allow", "ip_deny")
"""The limits of a tenant admin's own key that bound the keys it creates or changes."""


def _covered(inner: IPv4Network | IPv6Network, outer: tuple[str, ...]) -> bool:
    """Whether `inner` lies within the CIDRs `outer` together (of its own IP version):
    adjacent entries are merged first, so two halves of a /8 cover the /8."""
    nets = networks(outer)
    if isinstance(inner, IPv4Network):
        return any(inner.subnet_of(net) for net in collapse_addresses(
            net for net in nets if isinstance(net, IPv4Network)))
    return any(inner.subnet_of(net) for net in collapse_addresses(
        net for net in nets if isinstance(net, IPv6Network)))


def _exceeded(name: str, own: Any, given: Any) -> str | None:
    """Why `given` (the key's `name` limit) is wider than `own` (the caller's), or None."""
    if own is None or own == ():
        return None  # the caller is not limited in this
    if name.startswith("ip_") and given is not None:
        own, given = tuple(own), tuple(given)  # a change's lists come as lists
    if given is None:
        return f"you are limited ({name} {_shown(own)}), so the key must be too"
    if name == "models" and not set(given) <= set(own):
        return f"models {_shown(set(given) - set(own))} are not among yours"
    if name in CEILINGS and given > own:  # a later expiry is a wider limit too
        return f"{name} {_shown(given)} is above yours ({_shown(own)})"
    if name == "guardrails" and not set(own) <= set(given):
        return f"guardrails must include yours ({_shown(own)})"
    if name == "ip_allow" and not all(_covered(net, own) for net in networks(given)):
        return f"ip_allow must stay within yours ({_shown(own)})"
    if name == "ip_deny" and not all(_covered(net, given) for net in networks(own)):
        return f"ip_deny must keep yours ({_shown(own)})"
    return None


CEILINGS = ("rpm", "tpm", "monthly_budget_usd", "monthly_budget_tokens", "expires_at")
"""Limits a key may hold at most as high (as late) as the caller's own."""


def _shown(values: Any) -> str:
    if isinstance(values, datetime):
        return values.isoformat()
    if isinstance(values, int | Decimal):
        return str(values)
    return ", ".join(sorted(values))


def require_within(own: KeyLimits, given: Mapping[str, object]) -> None:
    """Refuse limits `given` to a key (by name; those of `BOUNDED` are checked) that are
    wider than the caller's own key's `own`: models a subset of the caller's, rpm, tpm,
    monthly budgets and expiry not above (later than) its, its guardrails included, its
    allow list kept (the key's within it), its deny list kept.

    Raises:
        AccessNotApproved: 403 `exceeds_own_limits`, naming the first limit exceeded.
    """
    for name in BOUNDED:
        why = _exceeded(name, getattr(own, name), given[name]) if name in given else None
        if why is not None:
            raise AccessNotApproved(
                f"A tenant admin may only create or change keys within its own key's "
                f"limits: {why}.", code="exceeds_own_limits")


def bounded_limits(limits: KeyLimits) -> dict[str, object]:
    """A new key's limits that `require_within` checks, by name."""
    return {name: getattr(limits, name) for name in BOUNDED}
