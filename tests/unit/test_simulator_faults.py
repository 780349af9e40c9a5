"""Fault injection in the simulator: error rates, hangs, outage windows, 429 bursts, /stats."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from broker.clock import FakeClock
from simulator import Faults, FaultWindow, SimulatorSettings, create_simulator_app
from simulator.faults import choose_fault


def _client(settings: SimulatorSettings, clock: FakeClock | None = None) -> httpx.AsyncClient:
    app = create_simulator_app(settings, clock=clock or FakeClock(100.0))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


async def _call(client: httpx.AsyncClient, model: str = "m") -> httpx.Response:
    return await client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})


def test_error_rate_is_honoured_and_reproducible() -> None:
    faults = Faults(error_rate=0.2, error_statuses=(500, 503))
    rng = random.Random(5)
    picks = [choose_fault(faults, rng, 0) for _ in range(5000)]
    failed = [pick for pick in picks if pick is not None]
    assert 0.18 < len(failed) / 5000 < 0.22
    assert {pick.status for pick in failed} == {500, 503}
    again = random.Random(5)
    assert [choose_fault(faults, again, 0) for _ in range(5000)] == picks


async def test_outage_window_and_429_burst_follow_the_clock() -> None:
    clock = FakeClock(100.0)
    settings = SimulatorSettings(faults=Faults(windows=(
        FaultWindow(start_s=10, end_s=20),
        FaultWindow(start_s=30, end_s=31, status=429, retry_after_s=2),
    )))
    async with _client(settings, clock) as client:
        assert (await _call(client)).status_code == 200
        clock.now += 10
        outage = await _call(client)
        assert outage.status_code == 503 and outage.json()["error"]["type"] == "server_error"
        clock.now += 20
        burst = await _call(client)
        assert burst.status_code == 429 and burst.headers["retry-after"] == "2"
        clock.now += 1
        assert (await _call(client)).status_code == 200
        stats = (await client.get("/stats")).json()
    assert stats["succeeded"] == 2
    assert stats["errors_by_status"] == {"429": 1, "503": 1}
    assert stats["injected"] == {"window": 2}


async def test_hang_outlives_the_client_timeout() -> None:
    settings = SimulatorSettings(faults=Faults(timeout_rate=1.0, hang_s=30))
    async with _client(settings) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await _call(client)
        stats = (await client.get("/stats")).json()
    assert stats["injected"] == {"timeout": 1} and stats["succeeded"] == 0


async def test_faults_per_model_leave_other_models_healthy() -> None:
    settings = SimulatorSettings(model_faults={"bad": Faults(error_rate=1.0)})
    async with _client(settings) as client:
        assert (await _call(client, "bad")).status_code >= 429
        assert (await _call(client, "good")).status_code == 200
        stats = (await client.get("/stats")).json()
    assert stats["requests_by_model"] == {"bad": 1, "good": 1}


def test_a_window_must_end_after_it_starts() -> None:
    with pytest.raises(ValueError, match="end_s must be after start_s"):
        FaultWindow(start_s=5, end_s=5)


async def test_faults_can_be_switched_on_and_off_at_run_time() -> None:
    async with _client(SimulatorSettings(seed=3)) as client:
        assert (await _call(client)).status_code == 200
        switched = await client.put("/faults", json={"error_rate": 1.0, "error_statuses": [503]})
        assert switched.status_code == 200
        assert (await _call(client)).status_code == 503
        refused = await client.put("/faults", json={"error_rate": 2})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "error_rate"
        assert (await client.put("/faults", json={})).status_code == 200
        assert (await _call(client)).status_code == 200
