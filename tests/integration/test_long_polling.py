"""`GET /v1/requests/{id}?wait=N` returns as soon as the answer is final."""

from __future__ import annotations

import time

import pytest

from broker.settings import KafkaSettings
from ingress.polling import UNKNOWN_GRACE_S
from simulator import SimulatorSettings
from tests.integration.stack import running_stack

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
