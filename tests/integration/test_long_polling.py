"""`GET /v1/requests/{id}?wait=N` returns as soon as the answer is final."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.settings import KafkaSettings
from broker.stores.notifications import FinalResultListener, notify_final_results
from broker.stores.requests import RequestRecord
from ingress.polling import UNKNOWN_GRACE_S, wait_until_final
from schemas import RequestStatus
from simulator import SimulatorSettings
from tests.integration.stack import eventually, running_stack

pytestmark = pytest.mark.integration

HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there!"}]}


async def test_wait_returns_when_final_not_when_the_wait_ends(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(
        kafka_settings, database_url, simulator=SimulatorSettings(latency_ms=800)
    ) as stack:
        ticket = (await stack.client.post("/v1/requests", json=HELLO, headers=stack.auth)).json()
        started = time.monotonic()
        state = await stack.client.get(f"/v1/requests/{ticket['id']}?wait=20", headers=stack.auth)
        elapsed = time.monotonic() - started
        assert state.status_code == 200
        assert state.json()["status"] == "succeeded"
        assert state.json()["result"]["object"] == "chat.completion"
        assert elapsed < 15, "the wait did not end when the result became final"

        # Already final: answered at once, whatever the wait.
        again = await stack.client.get(f"/v1/requests/{ticket['id']}?wait=20", headers=stack.auth)
        assert again.json()["status"] == "succeeded"


async def test_wait_ends_with_the_current_state_and_bad_waits_are_refused(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(
        kafka_settings, database_url, simulator=SimulatorSettings(latency_ms=5000)
    ) as stack:
        ticket = (await stack.client.post("/v1/requests", json=HELLO, headers=stack.auth)).json()
        state = await stack.client.get(f"/v1/requests/{ticket['id']}?wait=0.5", headers=stack.auth)
        assert state.status_code == 200
        assert state.json()["status"] == "queued"

        for bad in ("-1", "61", "soon"):
            refused = await stack.client.get(
                f"/v1/requests/{ticket['id']}?wait={bad}", headers=stack.auth)
            assert refused.status_code == 400
            assert refused.json()["error"]["param"] == "wait"

        started = time.monotonic()
        unknown = await stack.client.get("/v1/requests/req_nobody?wait=30", headers=stack.auth)
        assert unknown.status_code == 404
        assert time.monotonic() - started < UNKNOWN_GRACE_S + 3


class _CountingFinder:
    """A request that becomes final when the test says so; counts the lookups."""

    def __init__(self) -> None:
        self.lookups = 0
        self.status = RequestStatus.QUEUED

    async def find(self, request_id: str) -> RequestRecord | None:
        self.lookups += 1
        return RequestRecord(id=request_id, tenant="t", api_key_id=None, model="m",
                             lane=None, status=self.status, result=None,
                             created_at=datetime.now(UTC), finished_at=None)


async def test_a_wait_is_woken_by_the_ledgers_announcement(engine: AsyncEngine) -> None:
    listener = FinalResultListener(engine)
    await listener.start()
    try:
        await eventually(lambda: asyncio.sleep(0, listener.listening))
        finder = _CountingFinder()
        waiting = asyncio.create_task(wait_until_final(
            finder, "req_announced", "t", 30, accepted_here=True, announcements=listener))
        await asyncio.sleep(1.5)
        finder.status = RequestStatus.SUCCEEDED
        async with engine.begin() as connection:
            await notify_final_results(connection, ["req_other", "req_announced"])
        stored = await asyncio.wait_for(waiting, 10)
        assert stored is not None and stored.status is RequestStatus.SUCCEEDED
        # One look at the start, one when announced: polling would have looked ~8 times.
        assert finder.lookups == 2
    finally:
        await listener.stop()


async def test_the_ledger_announces_final_results(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url,
                             simulator=SimulatorSettings(latency_ms=1000)) as stack:
        announcements = stack.ingress.services.announcements
        assert announcements is not None
        await eventually(lambda: asyncio.sleep(0, announcements.listening))
        ticket = (await stack.client.post("/v1/requests", json=HELLO, headers=stack.auth)).json()
        with announcements.watch(ticket["id"]) as announced:
            await asyncio.wait_for(announced.wait(), 20)
