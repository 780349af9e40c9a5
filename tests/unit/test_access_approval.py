"""The access state machine, the refusal codes and the gate's cache (no database)."""

from __future__ import annotations

import pytest

from broker.access import AccessGate, Status, deciding, next_status, parse_resource, refusal
from broker.errors import AccessNotApproved, InvalidRequest


@pytest.mark.parametrize(("current", "action", "after"), [
    (None, "requested", "pending"),
    ("pending", "requested", "pending"),
    ("pending", "approved", "approved"),
    ("pending", "denied", "denied"),
    ("denied", "requested", "pending"),
    ("denied", "approved", "approved"),
    ("approved", "denied", "denied"),
])
def test_allowed_transitions(current: Status | None, action: str, after: Status) -> None:
    assert next_status(current, action) == after  # type: ignore[arg-type]


@pytest.mark.parametrize(("current", "action"), [
    (None, "approved"), (None, "denied"), ("approved", "approved"),
    ("approved", "requested"), ("denied", "denied"),
])
def test_refused_transitions(current: Status | None, action: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        next_status(current, action)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_access_transition"


@pytest.mark.parametrize(("statuses", "code"), [
    ((), "access_required"),
    (("pending",), "access_pending"),
    (("denied",), "access_denied"),
    (("denied", "pending"), "access_pending"),
    (("denied", "approved"), None),
    (("approved",), None),
])
def test_refusal_codes(statuses: tuple[Status, ...], code: str | None) -> None:
    refused = refusal("model:m", statuses)
    assert (refused.code if refused else None) == code


@pytest.mark.parametrize(("tenant", "key", "code"), [
    # A decision on the key's own grant decides, whatever the tenant's says.
    ("approved", "denied", "access_denied"),
    ("denied", "approved", None),
    ("pending", "denied", "access_denied"),
    # The key's own pending request decides too: a key denied on its own grant that asks
    # again waits for an admin, whatever the tenant's approval says.
    ("approved", "pending", "access_pending"),
    ("denied", "pending", "access_pending"),
    (None, "pending", "access_pending"),
    # Without a grant of its own, the tenant's decides.
    ("approved", None, None),
    ("denied", None, "access_denied"),
    (None, None, "access_required"),
])
def test_a_decision_on_the_keys_own_grant_overrides_the_tenants(
    tenant: Status | None, key: Status | None, code: str | None
) -> None:
    refused = refusal("model:m", deciding(tenant, key))
    assert (refused.code if refused else None) == code


def test_resources_name_a_model_or_a_template() -> None:
    assert parse_resource("model:gpt-4o") == ("model", "gpt-4o")
    assert parse_resource("template:summarize") == ("template", "summarize")
    for bad in ("gpt-4o", "tool:x", "model:", "model: "):
        with pytest.raises(InvalidRequest):
            parse_resource(bad)


class Grants:
    def __init__(self) -> None:
        self.by_scope: dict[tuple[str, str, str], list[Status]] = {}
        self.reads = 0

    async def statuses(self, tenant: str, key_id: str, resource: str) -> list[Status]:
        self.reads += 1
        return list(self.by_scope.get((tenant, key_id, resource), []))


async def test_gate_caches_until_forgotten_or_expired() -> None:
    grants, now = Grants(), [0.0]
    gate = AccessGate(grants, ttl_s=5, clock=lambda: now[0])
    with pytest.raises(AccessNotApproved):
        await gate.require("acme", "k1", "model:m")
    grants.by_scope[("acme", "k1", "model:m")] = ["approved"]
    with pytest.raises(AccessNotApproved):  # the cached answer, within its TTL
        await gate.require("acme", "k1", "model:m")
    assert grants.reads == 1
    gate.forget("globex")  # another tenant's decision keeps acme's answers
    with pytest.raises(AccessNotApproved):
        await gate.require("acme", "k1", "model:m")
    gate.forget("acme")
    await gate.require("acme", "k1", "model:m")
    grants.by_scope[("acme", "k1", "model:m")] = ["denied"]
    now[0] = 6.0  # expired: read again
    with pytest.raises(AccessNotApproved) as caught:
        await gate.require("acme", "k1", "model:m")
    assert caught.value.code == "access_denied"
    assert grants.reads == 3


async def test_gate_without_a_database_lets_nobody_through() -> None:
    with pytest.raises(AccessNotApproved) as caught:
        await AccessGate(None).require("acme", "k1", "template:t")
    assert caught.value.code == "access_required"
