"""Every error at the HTTP edge uses OpenAI's envelope and names the problem."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from broker.embedded import free_port
from broker.settings import IngressSettings, KafkaSettings
from broker.stores.keys import create_api_key
from tests.integration.stack import Stack, running_stack

pytestmark = pytest.mark.integration

HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there!"}]}


def _assert_envelope(response: httpx.Response, status: int, **expected: Any) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    for key, value in expected.items():
        assert error[key] == value, (key, error)
    return error


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, database_url: str) -> Any:
    async with running_stack(
        kafka_settings, database_url, ingress=IngressSettings(max_body_bytes=4096)
    ) as running:
        yield running


async def _post(stack: Stack, content: bytes | None = None, json: Any = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
    return await stack.client.post(
        "/v1/chat/completions", content=content, json=json,
        headers={**stack.auth, "Content-Type": "application/json", **(headers or {})},
    )


async def test_client_errors(stack: Stack) -> None:
    error = _assert_envelope(await _post(stack, content=b"{not json"), 400,
                             type="invalid_request_error")
    assert "not valid JSON" in error["message"]

    _assert_envelope(await _post(stack, json=[1, 2]), 400)

    error = _assert_envelope(await _post(stack, json={"model": "gpt-4o-mini"}), 400,
                             param="messages")
    assert "Missing required parameter: 'messages'" in error["message"]

    # A parameter sluicegate does not read is the provider's to judge: its 400, its words.
    error = _assert_envelope(await _post(stack, json={**HELLO, "temperature": 7}), 400,
                             code="provider_400")
    assert "temperature" in error["message"]

    bad_role = {**HELLO, "messages": [{"role": "wizard", "content": "hi"}]}
    _assert_envelope(await _post(stack, json=bad_role), 400, param="messages[0].role")

    # What sluicegate reads (for budgets and routing) it checks itself, naming the field.
    _assert_envelope(await _post(stack, json={**HELLO, "n": 0}), 400, param="n")
    error = _assert_envelope(await _post(stack, json={**HELLO, "stream": "yes"}), 400,
                             param="stream")
    nameless = {**HELLO, "tools": [{"type": "function", "function": {"description": "x"}}]}
    error = _assert_envelope(await _post(stack, json=nameless), 400,
                             param="tools[0].function.name")
    assert "Missing required parameter: 'tools[0].function.name'" in error["message"]
    part = {**HELLO, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    _assert_envelope(await _post(stack, json=part), 400, param="messages[0].content[0]")

    error = _assert_envelope(await _post(stack, json={**HELLO, "model": "gpt-9"}), 404,
                             code="model_not_found", param="model")
    assert "gpt-9" in error["message"]

    big = {**HELLO, "messages": [{"role": "user", "content": "x" * 5000}]}
    _assert_envelope(await _post(stack, json=big), 413, code="request_too_large")

    _assert_envelope(await _post(stack, json=HELLO, headers={"X-Request-Timeout": "soon"}), 400,
                     param="X-Request-Timeout")


async def test_authentication_errors(stack: Stack) -> None:
    no_key = await stack.client.post("/v1/chat/completions", json=HELLO)
    error = _assert_envelope(no_key, 401, code="invalid_api_key")
    assert "didn't provide an API key" in error["message"]
    bad_key = await stack.client.post(
        "/v1/chat/completions", json=HELLO, headers={"Authorization": "Bearer sk-sluice-nope"})
    _assert_envelope(bad_key, 401, code="invalid_api_key")
    basic = await stack.client.get("/v1/models", headers={"Authorization": "Basic abc"})
    _assert_envelope(basic, 401)
    # Authentication is checked before the body is even read.
    garbage = await stack.client.post("/v1/chat/completions", content=b"{")
    _assert_envelope(garbage, 401)


async def test_routing_errors_use_the_envelope(stack: Stack) -> None:
    _assert_envelope(await stack.client.get("/v1/nothing-here", headers=stack.auth), 404,
                     code="not_found")
    _assert_envelope(await stack.client.get("/v1/chat/completions", headers=stack.auth), 405)
    _assert_envelope(await stack.client.get("/v1/requests/req_unknown", headers=stack.auth), 404,
                     code="not_found")


async def test_kafka_unreachable_answers_503_with_retry_after(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    dead = kafka_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    async with running_stack(kafka_settings, database_url, ingress_kafka=dead) as stack:
        for route, headers in (("/v1/chat/completions", {}),
                               ("/v1/chat/completions", {"Prefer": "respond-async"}),
                               ("/v1/requests", {})):
            response = await stack.client.post(route, json=HELLO,
                                               headers={**stack.auth, **headers})
            error = _assert_envelope(response, 503, code="unavailable")
            assert response.headers["Retry-After"].isdigit()
            assert "Nothing was accepted" in error["message"]
            # Where our Kafka lives is for operators, not for callers.
            assert dead.kafka_bootstrap not in error["message"]
            assert "127.0.0.1" not in error["message"]
        health = await stack.client.get("/health")
        assert health.status_code == 503


async def test_guessing_keys_is_throttled_per_address_without_locking_out_good_keys(
    stack: Any,
) -> None:
    assert (await _post(stack, json=HELLO)).status_code == 200  # a known key, now cached
    for number in range(20):
        bad = {"Authorization": f"Bearer sk-sluice-guess-{number:04d}"}
        response = await stack.client.post("/v1/chat/completions", json=HELLO, headers=bad)
        assert response.status_code == 401
    refused = await stack.client.post("/v1/chat/completions", json=HELLO,
                                      headers={"Authorization": "Bearer sk-sluice-guess-9999"})
    _assert_envelope(refused, 429, code="too_many_failed_logins")
    assert int(refused.headers["Retry-After"]) >= 1
    # Someone else behind the same address, with a key the edge knows, is not locked out.
    assert (await _post(stack, json=HELLO)).status_code == 200


async def test_guesses_sent_all_at_once_are_throttled_too(stack: Any) -> None:
    # Concurrent guesses count from the moment their lookup starts, so a guesser cannot
    # run hundreds of lookups before the first failure is counted.
    guesses = await asyncio.gather(*(
        stack.client.post("/v1/chat/completions", json=HELLO,
                          headers={"Authorization": f"Bearer sk-sluice-burst-{number:04d}"})
        for number in range(200)))
    statuses = [guess.status_code for guess in guesses]
    assert statuses.count(401) == 20
    assert statuses.count(429) == 180


async def test_a_valid_key_sent_many_times_at_once_on_a_cold_cache_is_not_throttled(
    stack: Any,
) -> None:
    # A service starting up: a hundred requests with one key the edge has not seen yet.
    secret, _ = await create_api_key(stack.engine, "acme")
    answers = await asyncio.gather(*(
        stack.client.post("/v1/chat/completions", json=HELLO,
                          headers={"Authorization": f"Bearer {secret}"})
        for _ in range(100)))
    assert {answer.status_code for answer in answers} == {200}
