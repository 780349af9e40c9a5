"""Access approval: who may call a model or template that requires approval.

A resource is `model:<name>` or `template:<name>`. A tenant (for all its keys) or one key
asks for access; an admin approves or denies; every step is audited
(`broker.stores.access`). Callers without an approved grant are refused with 403 and a
code saying where they stand, so they know whether to ask, wait or give up.

Approvals are read on every call to such a resource, so they are cached in memory for a
few seconds (like API keys): a decision made through this process clears the cache at
once; one made elsewhere (the CLI, another ingress) shows within `ttl_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from broker.errors import AccessNotApproved, InvalidRequest

Status = Literal["pending", "approved", "denied"]
Action = Literal["requested", "approved", "denied"]
RESOURCE_KINDS = ("model", "template")
ADMIN_ACTOR = "admin"
"""The actor recorded for decisions made with the admin key (CLI or admin API)."""

# From each status, the actions allowed and where they lead. Asking again after a denial
# reopens the request; asking again while pending keeps it pending (and is audited, with
# the new reason). A denial of an approved grant revokes it; an approval can overturn a
# denial. Nothing else moves: approving twice is a mistake worth saying.
_TRANSITIONS: dict[Status | None, dict[Action, Status]] = {
    None: {"requested": "pending"},
    "pending": {"requested": "pending", "approved": "approved", "denied": "denied"},
    "denied": {"requested": "pending", "approved": "approved"},
    "approved": {"denied": "denied"},
}


def next_status(current: Status | None, action: Action) -> Status:
    """The status after `action` on a grant in `current` (None: no request yet).

    Raises:
        InvalidRequest: the action is not allowed from `current` (code
            `invalid_access_transition`).
    """
    allowed = _TRANSITIONS[current]
    if action not in allowed:
        state = "never requested" if current is None else current
        verb = {"requested": "request", "approved": "approve", "denied": "deny"}[action]
        raise InvalidRequest(f"Cannot {verb} access that is {state}.",
                             code="invalid_access_transition")
    return allowed[action]


def parse_resource(resource: str) -> tuple[str, str]:
    """`model:<name>` or `template:<name>` as (kind, name).

    Raises:
        InvalidRequest: anything else (param `resource`).
    """
    kind, sep, name = resource.partition(":")
    if not sep or kind not in RESOURCE_KINDS or not name.strip():
        raise InvalidRequest(f"resource must be 'model:<name>' or 'template:<name>', not "
                             f"{resource!r}.", param="resource", code="invalid_resource")
    return kind, name


def deciding(tenant: Status | None, key: Status | None) -> list[Status]:
    """The statuses that decide for a key whose tenant-wide grant is `tenant` and whose
    own grant is `key` (None: no such grant), as `refusal` reads them.

    A key's own grant, once it exists, decides alone: denying one key revokes it even
    under a tenant-wide approval, and approving one key opens it under a tenant-wide
    denial. Its pending state decides too: a key denied on its own grant that asks again
    is waiting for an admin, not let back in by the tenant's approval. (A key that has
    access already may not ask for it, `ingress.access`, so asking never locks it out.)
    """
    if key is not None:
        return [key]
    return [] if tenant is None else [tenant]


def refusal(resource: str, statuses: Sequence[Status]) -> AccessNotApproved | None:
    """Why a caller whose deciding grants (`deciding`) are `statuses` may not use
    `resource`; None when one of them is approved. Pending wins over denied: a caller
    who asked again after a denial is waiting, not refused."""
    if "approved" in statuses:
        return None
    if "pending" in statuses:
        return AccessNotApproved(
            f"Access to {resource} is awaiting approval by an admin.", code="access_pending")
    if "denied" in statuses:
        return AccessNotApproved(
            f"Access to {resource} was denied. Ask an admin, or request it again with a "
            "reason (POST /v1/access/requests).", code="access_denied")
    return AccessNotApproved(
        f"{resource} requires approval before use. Request access with POST "
        f"/v1/access/requests {{\"resource\": \"{resource}\", \"reason\": \"…\"}}.",
        code="access_required")


class GrantReader(Protocol):
    """The statuses of the grants covering a key (`broker.stores.access.AccessStore`)."""

    async def statuses(self, tenant: str, key_id: str, resource: str) -> list[Status]:
        """Statuses of the tenant-wide grant and the key's own that decide for `resource`
        (`deciding`: a decision on the key's own grant overrides the tenant's)."""
        ...


class AccessGate:
    """Refuses callers without approved access; cached per (tenant, key, resource)."""

    def __init__(self, store: GrantReader | None, *, ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str, str], tuple[float, tuple[Status, ...]]] = {}

    async def require(self, tenant: str, key_id: str, resource: str) -> None:
        """Return when `key_id` of `tenant` may use `resource` (which requires approval).

        The check templates call too: `require(tenant, key_id, "template:<name>")`.

        Raises:
            AccessNotApproved: no approved grant (or no database to ask).
            DatabaseUnavailable: PostgreSQL could not be reached.
        """
        scope = (tenant, key_id, resource)
        now = self._clock()
        cached = self._cache.get(scope)
        if cached is not None and cached[0] > now:
            statuses = cached[1]
        else:
            found = () if self._store is None else tuple(
                await self._store.statuses(tenant, key_id, resource))
            statuses = found
            if len(self._cache) > 10_000:  # a bound, not an LRU: entries are cheap to refetch
                self._cache.clear()
            self._cache[scope] = (now + self._ttl_s, statuses)
        refused = refusal(resource, statuses)
        if refused is not None:
            raise refused

    def forget(self, tenant: str | None = None) -> None:
        """Drop cached answers (of `tenant`, or all): a decision was just made."""
        if tenant is None:
            self._cache.clear()
            return
        for scope in [scope for scope in self._cache if scope[0] == tenant]:
            del self._cache[scope]
