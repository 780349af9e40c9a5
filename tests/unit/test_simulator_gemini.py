"""The simulator speaking Google's Gemini API, driven in-process through ASGI.

Shapes follow the Gemini API reference (generateContent, streamGenerateContent with
alt=sse, countTokens, embedContent, batchEmbedContents, errors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from broker.clock import FakeClock
from simulator import Faults, SimulatorSettings, create_simulator_app

MODEL = "gemini-2.0-flash"
URL = f"/v1beta/models/{MODEL}"
KEY = {"x-goog-api-key": "AIza-test"}
USER = [{"role": "user", "parts": [{"text": "Name a river."}]}]
WEATHER = {"functionDeclarations": [{
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}},
                   "required": ["city"]}}]}


def _client(settings: SimulatorSettings | None = None) -> httpx.AsyncClient:
    app = create_simulator_app(settings or SimulatorSettings(), clock=FakeClock(0.0))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with _client() as client:
        yield client


async def _generate(client: httpx.AsyncClient, method: str = "generateContent",
                    **fields: Any) -> httpx.Response:
    return await client.post(f"{URL}:{method}", json={"contents": USER, **fields}, headers=KEY)


async def test_answers_a_generate_content_response_from_the_same_brain(
        client: httpx.AsyncClient) -> None:
    response = await _generate(client, systemInstruction={"parts": [{"text": "Be terse."}]})
    assert response.status_code == 200
    data = response.json()
    openai = (await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Name a river."}]})).json()
    (candidate,) = data["candidates"]
    assert candidate == {"content": {"role": "model", "parts": [
        {"text": openai["choices"][0]["message"]["content"]}]},
        "finishReason": "STOP", "index": 0}
    usage = openai["usage"]
    assert data["usageMetadata"] == {
        "promptTokenCount": usage["prompt_tokens"],
        "candidatesTokenCount": usage["completion_tokens"],
        "totalTokenCount": usage["total_tokens"],
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage["prompt_tokens"]}]}
    assert data["modelVersion"] == MODEL and data["responseId"]


async def test_the_key_may_come_as_a_query_parameter_and_is_required(
        client: httpx.AsyncClient) -> None:
    body = {"contents": USER}
    assert (await client.post(f"{URL}:generateContent?key=AIza-test", json=body)).status_code \
        == 200
    refused = await client.post(f"{URL}:generateContent", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"]["status"] == "PERMISSION_DENIED"
    assert refused.json()["error"]["code"] == 403
    # The SDK's default version is v1, also served.
    v1 = await client.post(f"/v1/models/{MODEL}:generateContent", json=body, headers=KEY)
    assert v1.status_code == 200


async def test_generation_config_shapes_the_answer(client: httpx.AsyncClient) -> None:
    short = (await _generate(client, generationConfig={
        "maxOutputTokens": 3, "candidateCount": 2})).json()
    assert [c["finishReason"] for c in short["candidates"]] == ["MAX_TOKENS", "MAX_TOKENS"]
    assert [c["index"] for c in short["candidates"]] == [0, 1]
    assert short["usageMetadata"]["candidatesTokenCount"] == 6
    text = (await _generate(client)).json()["candidates"][0]["content"]["parts"][0]["text"]
    stop = " " + text.split(" ")[2]
    cut = (await _generate(client, generationConfig={"stopSequences": [stop]})).json()
    assert cut["candidates"][0]["content"]["parts"][0]["text"] == text[: text.index(stop)]
    assert cut["candidates"][0]["finishReason"] == "STOP"
    typed = (await _generate(client, generationConfig={
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"river": {"type": "STRING"},
                                                            "length_km": {"type": "INTEGER"}}}},
    )).json()
    answer = orjson.loads(typed["candidates"][0]["content"]["parts"][0]["text"])
    assert isinstance(answer["river"], str) and isinstance(answer["length_km"], int)


async def test_function_call_round_trip(client: httpx.AsyncClient) -> None:
    asked = [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}]
    called = (await client.post(f"{URL}:generateContent", headers=KEY, json={
        "contents": asked, "tools": [WEATHER]})).json()
    (part,) = called["candidates"][0]["content"]["parts"]
    assert part["functionCall"]["name"] == "get_weather"
    assert isinstance(part["functionCall"]["args"]["city"], str)
    answered = (await client.post(f"{URL}:generateContent", headers=KEY, json={
        "tools": [WEATHER], "contents": [
            *asked, called["candidates"][0]["content"],
            {"role": "user", "parts": [{"functionResponse": {
                "name": "get_weather", "response": {"temperature_c": 18}}}]}]})).json()
    assert "text" in answered["candidates"][0]["content"]["parts"][0]
    off = (await client.post(f"{URL}:generateContent", headers=KEY, json={
        "contents": asked, "tools": [WEATHER],
        "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}})).json()
    assert "text" in off["candidates"][0]["content"]["parts"][0]


async def test_stream_chunks_add_up_and_end_with_usage(client: httpx.AsyncClient) -> None:
    whole = (await _generate(client)).json()
    response = await client.post(f"{URL}:streamGenerateContent?alt=sse", json={
        "contents": USER}, headers=KEY)
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = [orjson.loads(line.removeprefix("data: "))
              for line in response.text.splitlines() if line.startswith("data: ")]
    assert len(chunks) > 1
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == whole["candidates"][0]["content"]["parts"][0]["text"]
    assert "finishReason" not in chunks[0]["candidates"][0]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"] == whole["usageMetadata"]
    assert chunks[0]["usageMetadata"]["promptTokenCount"] == \
        whole["usageMetadata"]["promptTokenCount"]


async def test_a_cut_stream_ends_with_an_error_object() -> None:
    async with _client(SimulatorSettings(faults=Faults(stream_cut_rate=1.0))) as client:
        response = await _generate(client, "streamGenerateContent")
    last = orjson.loads(response.text.strip().splitlines()[-1].removeprefix("data: "))
    assert last["error"]["code"] == 503 and last["error"]["status"] == "UNAVAILABLE"


async def test_rate_limit_is_resource_exhausted_with_retry_info() -> None:
    async with _client(SimulatorSettings(rpm=1)) as client:
        assert (await _generate(client)).status_code == 200
        refused = await _generate(client)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                 "retryDelay": "60s"}]
    assert not [name for name in refused.headers if name.startswith("x-ratelimit")]


async def test_injected_faults_and_invalid_bodies_use_googles_envelope() -> None:
    settings = SimulatorSettings(model_faults={"down": Faults(error_rate=1.0,
                                                              error_statuses=(503,))})
    async with _client(settings) as client:
        down = await client.post("/v1beta/models/down:generateContent", headers=KEY,
                                 json={"contents": USER})
        empty = await client.post(f"{URL}:generateContent", headers=KEY, json={"contents": []})
    assert down.status_code == 503 and down.json()["error"]["status"] == "UNAVAILABLE"
    assert empty.status_code == 400
    error = empty.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["fieldViolations"][0]["field"] == "contents"


async def test_cached_share_is_reported_as_cached_content_tokens() -> None:
    async with _client(SimulatorSettings(cached_input_share=0.5)) as client:
        usage = (await _generate(client)).json()["usageMetadata"]
    assert usage["cachedContentTokenCount"] == usage["promptTokenCount"] // 2


async def test_count_tokens_and_embeddings(client: httpx.AsyncClient) -> None:
    prompt = (await _generate(client)).json()["usageMetadata"]["promptTokenCount"]
    counted = await client.post(f"{URL}:countTokens", headers=KEY, json={"contents": USER})
    assert counted.json() == {"totalTokens": prompt}
    one = (await client.post("/v1beta/models/text-embedding-004:embedContent", headers=KEY,
                             json={"content": {"parts": [{"text": "river"}]}})).json()
    assert len(one["embedding"]["values"]) == 768
    batch = (await client.post("/v1beta/models/gemini-embedding-001:batchEmbedContents",
                               headers=KEY, json={"requests": [
                                   {"model": "models/gemini-embedding-001",
                                    "content": {"parts": [{"text": "river"}]}},
                                   {"content": {"parts": [{"text": "lake"}]},
                                    "outputDimensionality": 8}]})).json()
    assert [len(e["values"]) for e in batch["embeddings"]] == [3072, 8]
    again = (await client.post("/v1beta/models/text-embedding-004:embedContent", headers=KEY,
                               json={"content": {"parts": [{"text": "river"}]}})).json()
    assert again == one
