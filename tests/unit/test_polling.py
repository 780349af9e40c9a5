"""Long polling waits for requests it knows, and not long for ids nobody accepted."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.errors import InvalidRequest
from ingress.polling import parse_wait, wait_until_final


@dataclass(frozen=True)
class _Stored:
    id: str
    tenant: str
    model: str
    status: str
    result: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


class _RecordedLater:
    """The ledger records the request after `delay_s`, already final."""

    def __init__(self, delay_s: float, tenant: str = "acme"):
        self._ready_at = time.monotonic() + delay_s
        self._tenant = tenant

    async def find(self, request_id: str) -> _Stored | None:
        if time.monotonic() < self._ready_at:
            return None
        now = datetime.now(UTC)
        return _Stored(request_id, self._tenant, "m", "succeeded", {}, now, now)


async def test_a_request_accepted_here_is_waited_for_past_the_grace() -> None:
    stored = await wait_until_final(_RecordedLater(0.3), "r", "acme", 5, accepted_here=True,
                                    grace_s=0.1)
    assert stored is not None and stored.status == "succeeded"


async def test_an_id_nobody_recorded_ends_after_the_grace() -> None:
    started = time.monotonic()
    stored = await wait_until_final(_RecordedLater(30), "r", "acme", 5, accepted_here=False,
                                    grace_s=0.1)
    assert stored is None
    assert time.monotonic() - started < 1


async def test_another_tenants_request_returns_at_once() -> None:
    started = time.monotonic()
    stored = await wait_until_final(_RecordedLater(0, tenant="other"), "r", "acme", 5,
                                    accepted_here=False)
    assert stored is not None and stored.tenant == "other"
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("raw", ["-1", "61", "soon"])
def test_bad_waits_name_the_parameter(raw: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_wait(raw)
    assert caught.value.param == "wait"


def test_absent_wait_is_zero() -> None:
    assert parse_wait(None) == 0.0
    assert parse_wait("2.5") == 2.5
