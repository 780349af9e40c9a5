"""A tenant admin's keys stay within its own key's limits (`ingress.key_admin.require_within`):
each limit it could otherwise escape, and what stays allowed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from broker.errors import AccessNotApproved
from broker.stores.keys import KeyLimits
from ingress.key_admin import bounded_limits, require_within

EXPIRES = datetime(2027, 1, 1, tzinfo=UTC)
OWN = KeyLimits(models=frozenset({"a", "b"}), rpm=100, tpm=10_000, guardrails=("pii",),
                ip_allow=("10.0.0.0/8",), ip_deny=("10.9.0.0/16",), role="tenant_admin",
                monthly_budget_usd=Decimal("50"), monthly_budget_tokens=1_000_000,
                expires_at=EXPIRES)
WITHIN = KeyLimits(models=frozenset({"a"}), rpm=100, tpm=5_000, guardrails=("pii", "inj"),
                   ip_allow=("10.1.0.0/16", "10.2.3.4/32"), ip_deny=("10.9.0.0/16",),
                   monthly_budget_usd=Decimal("50"), monthly_budget_tokens=10,
                   expires_at=EXPIRES - timedelta(days=1))


def test_a_key_within_every_limit_passes() -> None:
    require_within(OWN, bounded_limits(WITHIN))
    # A wider deny list still keeps the caller's (a supernet covers it).
    require_within(OWN, {"ip_deny": ["10.0.0.0/8"]})


def test_lists_are_compared_as_a_whole_not_entry_by_entry() -> None:
    # Two halves of the caller's deny list keep it; two halves of its allow list stay in.
    require_within(OWN, {"ip_deny": ["10.9.0.0/17", "10.9.128.0/17"]})
    split = KeyLimits(role="tenant_admin", ip_allow=("10.0.0.0/9", "10.128.0.0/9"))
    require_within(split, {"ip_allow": ["10.0.0.0/8"]})
    with pytest.raises(AccessNotApproved):
        require_within(split, {"ip_allow": ["10.0.0.0/7"]})


def test_an_unlimited_caller_limits_nothing() -> None:
    require_within(KeyLimits(role="tenant_admin"), bounded_limits(KeyLimits()))


@pytest.mark.parametrize(("given", "named"), [
    ({"models": None}, "models"),
    ({"models": frozenset({"a", "c"})}, "models c are not among yours"),
    ({"rpm": None}, "rpm"),
    ({"rpm": 101}, "rpm 101 is above yours (100)"),
    ({"tpm": 10_001}, "tpm 10001 is above yours (10000)"),
    ({"monthly_budget_usd": None}, "monthly_budget_usd"),
    ({"monthly_budget_usd": Decimal("50.01")}, "monthly_budget_usd 50.01 is above yours (50)"),
    ({"monthly_budget_tokens": 1_000_001}, "monthly_budget_tokens 1000001 is above yours"),
    # A key that outlives its maker's would keep its rights after the maker's expire.
    ({"expires_at": None}, "expires_at"),
    ({"expires_at": EXPIRES + timedelta(seconds=1)}, "expires_at 2027-01-01T00:00:01+00:00"),
    ({"guardrails": None}, "guardrails"),
    ({"guardrails": ("inj",)}, "guardrails must include yours (pii)"),
    ({"ip_allow": None}, "ip_allow"),
    ({"ip_allow": ["10.0.0.0/8", "192.168.0.0/16"]}, "ip_allow must stay within yours"),
    ({"ip_allow": ["::1/128"]}, "ip_allow must stay within yours"),
    ({"ip_allow": ["0.0.0.0/0"]}, "ip_allow must stay within yours"),
    ({"ip_deny": None}, "ip_deny"),
    ({"ip_deny": ["10.9.1.0/24"]}, "ip_deny must keep yours (10.9.0.0/16)"),
])
def test_each_limit_escaped_is_refused_by_name(given: dict[str, object], named: str) -> None:
    with pytest.raises(AccessNotApproved) as caught:
        require_within(OWN, bounded_limits(WITHIN) | given)
    assert caught.value.code == "exceeds_own_limits"
    assert named in str(caught.value)


def test_a_change_is_checked_on_the_limits_it_touches_only() -> None:
    # A PATCH naming only ip_deny is not refused for limits it does not set.
    require_within(OWN, {"ip_deny": ["10.9.0.0/16", "172.16.0.0/12"]})
    with pytest.raises(AccessNotApproved):
        require_within(OWN, {"ip_deny": None})
