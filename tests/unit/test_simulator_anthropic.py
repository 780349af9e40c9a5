"""The simulator speaking Anthropic's Messages API, driven in-process through ASGI.

Request and error shapes follow Anthropic's API reference (messages, streaming, errors,
rate limits, prompt caching, token counting).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from broker.clock import FakeClock
from broker.tokens import encoding_for_model
from simulator import Faults, SimulatorSettings, create_simulator_app

HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
MODEL = "claude-sonnet-4-5"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}
LONG_SYSTEM = "You answer questions about the design of sluicegate. " * 40


def _client(settings: SimulatorSettings | None = None,
            clock: FakeClock | None = None) -> httpx.AsyncClient:
    app = create_simulator_app(settings or SimulatorSettings(), clock=clock or FakeClock(0.0))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with _client() as client:
        yield client


async def _message(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 64,
            "messages": [{"role": "user", "content": "Name a river."}], **fields}
    return await client.post("/v1/messages", json=body, headers=HEADERS)


async def test_answers_as_a_message_with_the_same_brain_as_openai(
        client: httpx.AsyncClient) -> None:
    response = await _message(client, system="You are terse.")
    assert response.status_code == 200
    message = response.json()
    assert message["id"].startswith("msg_") and message["type"] == "message"
    assert (message["role"], message["model"]) == ("assistant", MODEL)
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    openai = (await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a river."}]})).json()
    assert message["content"] == [{"type": "text",
                                   "text": openai["choices"][0]["message"]["content"]}]
    assert message["usage"] == {
        "input_tokens": openai["usage"]["prompt_tokens"],
        "output_tokens": openai["usage"]["completion_tokens"],
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "service_tier": "standard"}
    assert response.headers["request-id"].startswith("req_")


async def test_key_and_version_headers_are_required(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    no_key = await client.post("/v1/messages", json=body,
                               headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401
    assert no_key.json()["type"] == "error"
    assert no_key.json()["error"]["type"] == "authentication_error"
    no_version = await client.post("/v1/messages", json=body, headers={"x-api-key": "k"})
    assert no_version.status_code == 400
    assert no_version.json()["error"] == {"type": "invalid_request_error",
                                          "message": "anthropic-version: header is required"}
    bearer = await client.post("/v1/messages", json=body, headers={
        "authorization": "Bearer sk-ant-test", "anthropic-version": "2023-06-01"})
    assert bearer.status_code == 200


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"max_tokens": None}, "max_tokens: Field required"),
    ({"messages": [{"role": "assistant", "content": "Hello"}]},
     'first message must use the "user" role'),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     'found multiple "user" roles in a row'),
    ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
])
async def test_invalid_bodies_get_anthropics_400(client: httpx.AsyncClient,
                                                 fields: dict[str, Any], fragment: str) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    body = {key: value for key, value in body.items() if value is not None}
    response = await client.post("/v1/messages", json=body, headers=HEADERS)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


async def test_max_tokens_and_stop_sequences_end_the_answer(client: httpx.AsyncClient) -> None:
    short = (await _message(client, max_tokens=3)).json()
    assert (short["stop_reason"], short["usage"]["output_tokens"]) == ("max_tokens", 3)
    text = (await _message(client)).json()["content"][0]["text"]
    stop = " " + text.split(" ")[3]
    cut = (await _message(client, stop_sequences=["zzz", stop])).json()
    expected = text[: text.index(stop)]
    assert cut["content"][0]["text"] == expected
    assert (cut["stop_reason"], cut["stop_sequence"]) == ("stop_sequence", stop)
    assert cut["usage"]["output_tokens"] == encoding_for_model(MODEL).count(expected)


async def test_tool_use_round_trip(client: httpx.AsyncClient) -> None:
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    called = (await _message(client, tools=[WEATHER_TOOL], messages=asked)).json()
    assert called["stop_reason"] == "tool_use"
    (block,) = called["content"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather"
    assert block["id"].startswith("toolu_") and isinstance(block["input"]["city"], str)
    answered = (await _message(client, tools=[WEATHER_TOOL], messages=[
        *asked, {"role": "assistant", "content": called["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"],
                                      "content": "18 degrees, sunny"}]}])).json()
    assert answered["stop_reason"] == "end_turn"
    assert answered["content"][0]["type"] == "text"
    refused = (await _message(client, tools=[WEATHER_TOOL], messages=asked,
                              tool_choice={"type": "none"})).json()
    assert refused["stop_reason"] == "end_turn"


async def test_prompt_cache_writes_then_reads_a_marked_prefix() -> None:
    clock = FakeClock(0.0)
    system = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    async with _client(clock=clock) as client:
        first = (await _message(client, system=system)).json()["usage"]
        second = (await _message(client, system=system, messages=[
            {"role": "user", "content": "Name a mountain."}])).json()["usage"]
        clock.now += 301  # past the five-minute life of the entry
        expired = (await _message(client, system=system)).json()["usage"]
        uncached = (await _message(client, system=LONG_SYSTEM)).json()["usage"]
    assert first["cache_creation_input_tokens"] > 400 and first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0
    assert expired["cache_creation_input_tokens"] == first["cache_creation_input_tokens"]
    # The cache splits the input; it never changes how much there is.
    assert (first["input_tokens"] + first["cache_creation_input_tokens"]
            == uncached["input_tokens"])
    assert uncached["cache_creation_input_tokens"] == uncached["cache_read_input_tokens"] == 0


async def test_rate_limits_use_anthropics_headers_and_envelope() -> None:
    async with _client(SimulatorSettings(rpm=1, tpm=10_000)) as client:
        admitted = await _message(client)
        refused = await _message(client)
    assert admitted.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert admitted.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert admitted.headers["anthropic-ratelimit-input-tokens-limit"] == "10000"
    reset = admitted.headers["anthropic-ratelimit-tokens-reset"]
    assert datetime.fromisoformat(reset).tzinfo is not None  # RFC 3339, with its zone
    assert "x-ratelimit-limit-requests" not in admitted.headers
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["retry-after"] == "60"


@pytest.mark.parametrize(("injected", "status", "kind"), [
    (503, 529, "overloaded_error"), (529, 529, "overloaded_error"), (500, 500, "api_error")])
async def test_injected_faults_speak_anthropic(injected: int, status: int, kind: str) -> None:
    faults = Faults(error_rate=1.0, error_statuses=(injected,))
    async with _client(SimulatorSettings(model_faults={MODEL: faults})) as client:
        response = await _message(client)
        stats = (await client.get("/stats")).json()
    assert response.status_code == status
    assert response.json()["error"]["type"] == kind
    assert response.json()["request_id"] == response.headers["request-id"]
    assert stats["requests_by_format"] == {"anthropic": 1}


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        events.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return events


async def test_stream_sends_named_events_that_add_up_to_the_message(
        client: httpx.AsyncClient) -> None:
    whole = (await _message(client)).json()
    response = await _message(client, stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.content)
    names = [name for name, _ in events]
    assert names[:4] == ["message_start", "content_block_start", "ping", "content_block_delta"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta",
                          "message_stop"]
    assert all(name == data["type"] for name, data in events)
    text = "".join(data["delta"]["text"] for name, data in events
                   if name == "content_block_delta")
    assert text == whole["content"][0]["text"]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == whole["usage"]["output_tokens"]
    assert events[0][1]["message"]["usage"]["input_tokens"] == whole["usage"]["input_tokens"]


async def test_tool_input_streams_as_json_pieces(client: httpx.AsyncClient) -> None:
    response = await _message(client, stream=True, tools=[WEATHER_TOOL])
    events = _events(response.content)
    pieces = [data["delta"]["partial_json"] for name, data in events
              if name == "content_block_delta"]
    assert all(data["delta"]["type"] == "input_json_delta" for name, data in events
               if name == "content_block_delta")
    assert set(orjson.loads("".join(pieces))) == {"city"}
    assert events[1][1]["content_block"]["type"] == "tool_use"


async def test_a_cut_stream_ends_with_an_overloaded_error_event() -> None:
    settings = SimulatorSettings(faults=Faults(stream_cut_rate=1.0))
    async with _client(settings) as client:
        events = _events((await _message(client, stream=True)).content)
    assert events[-1] == ("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded (simulated)."}})
    assert "message_stop" not in [name for name, _ in events]


async def test_count_tokens_matches_the_messages_usage(client: httpx.AsyncClient) -> None:
    fields = {"system": "You are terse.", "tools": [WEATHER_TOOL],
              "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    usage = (await _message(client, **fields)).json()["usage"]
    counted = await client.post("/v1/messages/count_tokens", headers=HEADERS,
                                json={"model": MODEL, **fields})
    assert counted.status_code == 200
    assert counted.json() == {"input_tokens": usage["input_tokens"]}
