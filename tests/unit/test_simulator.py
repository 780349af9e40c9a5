"""The simulated OpenAI-compatible HTTP provider, driven in-process through ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from broker.tokens import count_chat_prompt_tokens, encoding_for_model
from schemas import ChatMessage
from simulator import SimulatorApp, SimulatorSettings, create_simulator_app

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a river."},
]


@pytest.fixture
def app() -> SimulatorApp:
    return create_simulator_app(SimulatorSettings(output_tokens=12, models=("sim-a", "sim-b")))


@pytest.fixture
async def client(app: SimulatorApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://simulator") as client:
        yield client


async def _complete(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, **fields}
    return await client.post("/v1/chat/completions", json=body)


async def test_usage_is_token_accurate(client: httpx.AsyncClient) -> None:
    response = await _complete(client)
    assert response.status_code == 200
    data = response.json()
    text = data["choices"][0]["message"]["content"]
    messages = [ChatMessage.model_validate(message) for message in MESSAGES]
    assert data["usage"] == {
        "prompt_tokens": count_chat_prompt_tokens(messages, "gpt-4o-mini"),
        "completion_tokens": 12,
        "total_tokens": count_chat_prompt_tokens(messages, "gpt-4o-mini") + 12,
    }
    assert encoding_for_model("gpt-4o-mini").count(text) == 12
    assert data["model"] == "gpt-4o-mini"
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["finish_reason"] == "stop"
    request_id = response.headers["x-request-id"]
    assert data["id"] == "chatcmpl-sim-" + request_id.removeprefix("req-sim-")


async def test_same_prompt_same_text(client: httpx.AsyncClient) -> None:
    first, second = await _complete(client), await _complete(client)
    assert first.json()["choices"] == second.json()["choices"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_max_tokens_respected(client: httpx.AsyncClient) -> None:
    data = (await _complete(client, max_tokens=3)).json()
    assert data["usage"]["completion_tokens"] == 3
    assert data["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"temperature": 7}, "temperature", "less than or equal to 2"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "Input should"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "Input should"),
        ({"messages": []}, "messages", "at least 1"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"top_logprobs": 3}, "top_logprobs", "'logprobs' must be true"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[0].content[0]", "needs its 'image_url' field"),
    ],
)
async def test_bad_body_gets_openai_error_envelope_naming_the_field(
    client: httpx.AsyncClient, fields: dict[str, Any], param: str, fragment: str
) -> None:
    response = await _complete(client, **fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]
    assert fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


async def test_unparseable_body_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] is None
    assert "JSON" in response.json()["error"]["message"]


async def test_stats_count(client: httpx.AsyncClient) -> None:
    ok = (await _complete(client)).json()["usage"]
    await _complete(client, max_tokens=2)
    await _complete(client, temperature=9)
    stats = (await client.get("/stats")).json()
    assert stats == {
        "requests": 3,
        "succeeded": 2,
        "prompt_tokens": 2 * ok["prompt_tokens"],
        "completion_tokens": ok["completion_tokens"] + 2,
        "errors_by_status": {"400": 1},
    }


async def test_models_and_health(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()
    assert [model["id"] for model in models["data"]] == ["sim-a", "sim-b"]
    assert models["object"] == "list"
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert (await client.get("/v1/chat/completions")).status_code == 405


async def test_latency_is_applied() -> None:
    app = create_simulator_app(SimulatorSettings(latency_ms=30, jitter_ms=10, seed=1))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://simulator") as client:
        response = await _complete(client)
    assert response.status_code == 200
    assert response.elapsed.total_seconds() >= 0.03
