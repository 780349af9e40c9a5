"""Long polling: `GET /v1/requests/{id}?wait=30` answers as soon as the request is final.

Any ingress instance can be asked, and the result of record lives in PostgreSQL (written by
the ledger). The ledger announces each final result (`broker.stores.notifications`) and the
wait is woken by that, looking in the database only then and every few seconds as a
fallback. While announcements are not coming (the listening connection is down, or there
is none) the wait polls with a growing interval instead: a handful of indexed lookups per
second at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from broker.errors import InvalidRequest
from ingress.services import RequestFinder, ResultAnnouncements, StoredRequest
from schemas import RequestStatus

MAX_WAIT_S = 60.0
_FIRST_INTERVAL_S = 0.05
_MAX_INTERVAL_S = 0.5
# While announcements flow, a poll looks in the database itself only this often.
_ANNOUNCED_INTERVAL_S = 5.0
# A request accepted by another instance is recorded by the ledger within milliseconds;
# an id still unknown after this long does not exist, and waiting longer helps nobody.
UNKNOWN_GRACE_S = 2.0


class LongPolls:
    """How many long polls each tenant has open, capped: each costs a few database
    lookups a second for up to a minute, so one tenant's thousands of waiting clients
    must not take the database from everyone else. Past the cap a poll answers at once
    with the request's current state, as `wait=0` would."""

    def __init__(self, per_tenant: int) -> None:
        self._per_tenant = per_tenant
        self._open: dict[str, int] = {}

    @contextmanager
    def slot(self, tenant: str) -> Iterator[bool]:
        """Whether `tenant` may wait now; the slot is held until the block ends."""
        if self._open.get(tenant, 0) >= self._per_tenant:
            yield False
            return
        self._open[tenant] = self._open.get(tenant, 0) + 1
        try:
            yield True
        finally:
            self._open[tenant] -= 1
            if not self._open[tenant]:
                del self._open[tenant]


def parse_wait(raw: str | None) -> float:
    """The `wait` query parameter in seconds (0 when absent), or `InvalidRequest`."""
    if raw is None or raw == "":
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_S:
        raise InvalidRequest(
            f"wait must be a number of seconds between 0 and {MAX_WAIT_S:g}.", param="wait"
        )
    return seconds


async def wait_until_final(
    requests: RequestFinder,
    request_id: str,
    tenant: str,
    wait_s: float,
    *,
    accepted_here: bool,
    grace_s: float = UNKNOWN_GRACE_S,
    announcements: ResultAnnouncements | None = None,
) -> StoredRequest | None:
    """The stored request once final, or as it stands when `wait_s` has passed.

    Returns at once for another tenant's request (the caller answers 404). A request this
    instance accepted is waited for in full even before the ledger records it; any other
    id that is not recorded at all is waited for at most `grace_s`.
    """
    started = time.monotonic()
    deadline = started + wait_s
    interval = _FIRST_INTERVAL_S
    # Watch before the first look: an announcement in between is not missed.
    with (announcements.watch(request_id) if announcements is not None
          else contextlib.nullcontext(asyncio.Event())) as announced:
        while True:
            announced.clear()
            stored = await requests.find(request_id)
            if stored is not None and (
                stored.tenant != tenant or stored.status != RequestStatus.QUEUED
            ):
                return stored
            now = time.monotonic()
            remaining = deadline - now
            unknown = stored is None and not accepted_here
            if remaining <= 0 or (unknown and now - started >= grace_s):
                return stored
            listening = announcements is not None and announcements.listening
            pause = _ANNOUNCED_INTERVAL_S if listening and not unknown else interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(announced.wait(), min(pause, remaining))
            interval = min(interval * 1.5, _MAX_INTERVAL_S)
