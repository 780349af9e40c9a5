"""The simulator speaking Azure OpenAI, its pattern routing, and `/stats` per format."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from broker.clock import FakeClock
from simulator import Faults, SimulatorSettings, create_simulator_app
from simulator.routes import Route, Router

DEPLOYMENT = "gpt4o-eastus"
CHAT = f"/openai/deployments/{DEPLOYMENT}/chat/completions"
VERSION = {"api-version": "2024-10-21"}
KEY = {"api-key": "azure-key"}
MESSAGES = [{"role": "user", "content": "Name a river."}]


def _client(settings: SimulatorSettings | None = None) -> httpx.AsyncClient:
    app = create_simulator_app(settings or SimulatorSettings(), clock=FakeClock(0.0))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with _client() as client:
        yield client


async def test_answers_as_openai_with_the_deployment_as_model(
        client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, params=VERSION, headers=KEY, json={"messages": MESSAGES})
    assert response.status_code == 200
    data = response.json()
    assert data["model"] == DEPLOYMENT and data["object"] == "chat.completion"
    openai = (await client.post("/v1/chat/completions", json={
        "model": DEPLOYMENT, "messages": MESSAGES})).json()
    assert data["choices"] == openai["choices"] and data["usage"] == openai["usage"]
    assert response.headers["apim-request-id"]
    embedded = await client.post(f"/openai/deployments/{DEPLOYMENT}/embeddings",
                                 params=VERSION, headers=KEY, json={"input": "river"})
    assert embedded.status_code == 200 and embedded.json()["model"] == DEPLOYMENT


async def test_version_and_key_are_checked_as_azure_does(client: httpx.AsyncClient) -> None:
    body = {"messages": MESSAGES}
    missing = await client.post(CHAT, headers=KEY, json=body)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "404", "message": "Resource not found"}}
    malformed = await client.post(CHAT, params={"api-version": "latest"}, headers=KEY,
                                  json=body)
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "BadRequest"
    no_key = await client.post(CHAT, params=VERSION, json=body,
                               headers={"authorization": "Bearer sk-openai"})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "401"
    invalid = await client.post(CHAT, params=VERSION, headers=KEY,
                                json={"messages": [], "temperature": 1})
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "messages"


async def test_rate_limits_speak_azure() -> None:
    async with _client(SimulatorSettings(rpm=1, tpm=5_000)) as client:
        admitted = await client.post(CHAT, params=VERSION, headers=KEY,
                                     json={"messages": MESSAGES})
        refused = await client.post(CHAT, params=VERSION, headers=KEY,
                                    json={"messages": MESSAGES})
    assert admitted.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(admitted.headers["x-ratelimit-remaining-tokens"]) < 5_000
    assert "x-ratelimit-limit-requests" not in admitted.headers
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "429"
    assert "API version 2024-10-21" in refused.json()["error"]["message"]
    assert (refused.headers["retry-after"], refused.headers["retry-after-ms"]) == \
        ("60", "60000")


async def test_faults_and_stats_count_per_format_and_model() -> None:
    settings = SimulatorSettings(model_faults={"down": Faults(error_rate=1.0,
                                                              error_statuses=(500,))})
    async with _client(settings) as client:
        down = await client.post("/openai/deployments/down/chat/completions", params=VERSION,
                                 headers=KEY, json={"messages": MESSAGES})
        await client.post(CHAT, params=VERSION, headers=KEY, json={"messages": MESSAGES})
        await client.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        stats = (await client.get("/stats")).json()
    assert down.status_code == 500 and down.json()["error"]["code"] == "500"
    assert stats["requests_by_format"] == {"azure": 2, "openai": 1}
    assert stats["requests_by_model"] == {"down": 1, DEPLOYMENT: 1, "m": 1}
    assert stats["errors_by_status"] == {"500": 1}


async def test_pattern_routes_answer_404_and_405(client: httpx.AsyncClient) -> None:
    wrong_method = await client.get(CHAT, params=VERSION)
    assert wrong_method.status_code == 405 and "use POST" in wrong_method.json()["error"][
        "message"]
    unknown = await client.post(f"/openai/deployments/{DEPLOYMENT}/images", headers=KEY)
    assert unknown.status_code == 404


async def _noop(*_: object) -> None:
    return None


def test_router_prefers_exact_paths_and_names_segments() -> None:
    router = Router([Route("GET", "/v1/batches/{batch_id}", _noop),
                     Route("POST", "/v1/batches/{batch_id}/cancel", _noop),
                     Route("GET", "/v1/batches/latest", _noop),
                     Route("POST", "/v1beta/models/{model}:generateContent", _noop)])
    assert router.find("GET", "/v1/batches/batch_1")[1] == {"batch_id": "batch_1"}
    assert router.find("GET", "/v1/batches/latest")[1] == {}
    assert router.find("POST", "/v1/batches/b/cancel")[1] == {"batch_id": "b"}
    assert router.find("GET", "/v1/batches/b/cancel") == (None, {}, ["POST"])
    assert router.find("POST", "/v1beta/models/gemini-2.0-flash:generateContent")[1] == {
        "model": "gemini-2.0-flash"}
    assert router.find("GET", "/v1/batches/a/b") == (None, {}, [])
