"""Guardrails end to end: the official openai SDK, ingress, real Kafka, a worker, the ledger
in real PostgreSQL, and a provider that records what it was sent and echoes it back.

The echo provider stands in for the simulator (whose answers do not depend on the words of
the prompt): restoring and output rules need an answer that repeats the prompt.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from sqlalchemy import text

from broker.batches.settings import BatchSettings
from broker.config import SluiceConfig, parse_config
from broker.settings import IngressSettings, KafkaSettings
from broker.stores.keys import KeyLimits, create_api_key
from broker.stores.tenants import set_tenant
from tests.integration import stack as stack_module
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack
from workers.batches import BatchTracker

# A gateway feature above the Kafka port: on the production engine only (the port's own
# behaviour is proven on both engines by tests/kafka_contract.py and the pipeline tests),
# which keeps CI within its time.
pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

MODEL, OPEN_MODEL = "gpt-4o-mini", "open-model"
EMAIL = "jane.doe@example.com"
ADMIN_KEY = "admin-secret-for-guardrail-tests"


class EchoProvider:
    """An ASGI OpenAI-compatible provider: records each chat body, answers with its last
    message's text."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw)
        self.bodies.append(body)
        said = body["messages"][-1]["content"]
        answer = json.dumps({
            "id": f"chatcmpl-echo-{len(self.bodies)}", "object": "chat.completion",
            "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"You said: {said}"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
        }).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    def prompts(self) -> list[str]:
        return [body["messages"][-1]["content"] for body in self.bodies]


def _config() -> SluiceConfig:
    return parse_config({
        "models": {MODEL: {"deployments": ["sim"], "guardrails": ["mask-pii"]},
                   OPEN_MODEL: {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "openai", "base_url": f"{SIM_BASE}/v1",
                                "model": "gpt-4o-mini", "input_usd_per_mtok": "0.15",
                                "output_usd_per_mtok": "0.60"}},
        "guardrails": {
            "mask-pii": {"pii": {"mode": "mask"}},
            "restore-pii": {"pii": {"mode": "mask", "restore": True}},
            "no-cards": {"pii": {"mode": "block", "entities": ["card"]}},
            "no-tickets": {"output": {"mode": "redact", "patterns": {"ticket": r"TCK-\d+"}}},
        },
    })


@pytest.fixture
async def echo(monkeypatch: pytest.MonkeyPatch) -> EchoProvider:
    provider = EchoProvider()
    monkeypatch.setattr(stack_module, "create_simulator_app", lambda settings: provider)
    return provider


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, database_url: str,
                echo: EchoProvider) -> AsyncIterator[Stack]:
    ingress = IngressSettings(sync_timeout_s=20, admin_key=ADMIN_KEY)
    async with running_stack(kafka_settings, database_url, config=_config(),
                             ingress=ingress) as running:
        yield running


async def _key(stack: Stack, *policies: str) -> str:
    secret, _ = await create_api_key(stack.engine, "acme",
                                     limits=KeyLimits(guardrails=tuple(policies)))
    return secret


async def _rows(stack: Stack, request_id: str) -> list[tuple[Any, ...]]:
    async with stack.engine.connect() as connection:
        result = await connection.execute(text(
            "SELECT policy, rule, action, stage, count, tenant, model FROM guardrail_events "
            "WHERE request_id = :id ORDER BY policy, rule, action"), {"id": request_id})
        return [tuple(row) for row in result]


async def _tables_holding(stack: Stack, needle: str) -> list[str]:
    async with stack.engine.connect() as connection:
        tables = (await connection.execute(text(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"))).scalars().all()
        holding = []
        for table in tables:
            found = await connection.execute(text(
                f'SELECT count(*) FROM "{table}" AS t WHERE strpos(t::text, :needle) > 0'),
                {"needle": needle})
            if found.scalar():
                holding.append(table)
        return holding


async def test_a_models_mask_policy_keeps_the_email_from_provider_and_database(
    stack: Stack, echo: EchoProvider,
) -> None:
    await set_tenant(stack.engine, "acme", store_content=True)  # prompts are stored: masked
    async with stack.openai() as sdk:
        completion = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Reply to {EMAIL} today."}])
    assert echo.prompts() == ["Reply to <EMAIL_1> today."]
    assert completion.choices[0].message.content == "You said: Reply to <EMAIL_1> today."
    rows = await eventually(lambda: _rows(stack, completion.id))
    assert rows == [("mask-pii", "email", "masked", "input", 1, "acme", MODEL)]
    stored = await eventually(lambda: stack.scalar(
        "SELECT prompt::text FROM requests WHERE id = :id", id=completion.id))
    assert "<EMAIL_1>" in stored
    assert await _tables_holding(stack, EMAIL) == []


async def test_a_keys_policies_restore_block_and_redact(stack: Stack, echo: EchoProvider) -> None:
    restoring = await _key(stack, "restore-pii")
    async with stack.openai(restoring) as sdk:
        completion = await sdk.chat.completions.create(
            model=OPEN_MODEL, messages=[{"role": "user", "content": f"I am {EMAIL}."}])
    assert echo.prompts()[-1] == "I am <EMAIL_1>."
    assert completion.choices[0].message.content == f"You said: I am {EMAIL}."
    assert await eventually(lambda: _rows(stack, completion.id)) == [
        ("restore-pii", "email", "masked", "input", 1, "acme", OPEN_MODEL),
        ("restore-pii", "placeholders", "restored", "output", 1, "acme", OPEN_MODEL)]

    calls = len(echo.bodies)
    blocking = await _key(stack, "no-cards")
    async with stack.openai(blocking) as sdk:
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.chat.completions.create(
                model=OPEN_MODEL,
                messages=[{"role": "user", "content": "Charge 4111 1111 1111 1111 please."}])
    assert len(echo.bodies) == calls  # no provider call
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "guardrail_blocked"
    assert "no-cards" in error["message"] and "4111" not in error["message"]
    request_id = str(error.get("id") or (refused.value.response.json().get("id")))
    assert await eventually(lambda: _rows(stack, request_id)) == [
        ("no-cards", "card", "blocked", "input", 1, "acme", OPEN_MODEL)]

    redacting = await _key(stack, "no-tickets")
    async with stack.openai(redacting) as sdk:
        completion = await sdk.chat.completions.create(
            model=OPEN_MODEL, messages=[{"role": "user", "content": "Status of TCK-4411?"}])
    assert completion.choices[0].message.content == "You said: Status of [REDACTED]?"
    assert await eventually(lambda: _rows(stack, completion.id)) == [
        ("no-tickets", "ticket", "redacted", "output", 1, "acme", OPEN_MODEL)]


async def test_the_admin_api_takes_a_keys_guardrails(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = await stack.client.post("/v1/admin/keys", headers=headers, json={
        "tenant": "acme", "guardrails": ["no-cards", "restore-pii"]})
    assert response.status_code == 201
    assert response.json()["guardrails"] == ["no-cards", "restore-pii"]
    async with stack.openai(response.json()["secret"]) as sdk:
        with pytest.raises(openai.BadRequestError, match="no-cards"):
            await sdk.chat.completions.create(
                model=OPEN_MODEL, messages=[{"role": "user", "content": "4111111111111111"}])
    typo = await stack.client.post("/v1/admin/keys", headers=headers, json={
        "tenant": "acme", "guardrails": ["no-crads"]})
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "guardrails"


async def test_batch_lines_pass_the_batch_keys_policies(
    stack: Stack, echo: EchoProvider, kafka_settings: KafkaSettings
) -> None:
    # The lines of a batch are sent by the tracker, not by the key: they still pass the
    # key's policies (a key must not escape them through the Batch API).
    blocking = await _key(stack, "no-cards")
    lines = "\n".join(json.dumps({
        "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": OPEN_MODEL, "messages": [{"role": "user", "content": text}]}})
        for custom_id, text in (("card", "Charge 4111 1111 1111 1111 please."),
                                ("plain", "What time is it?")))
    stop = asyncio.Event()
    tracker = asyncio.create_task(BatchTracker(
        kafka_settings, BatchSettings(batch_poll_interval_s=0.05), stack.engine,
        _config()).run(stop))
    try:
        async with stack.openai(blocking) as sdk:
            file = await sdk.files.create(file=("lines.jsonl", lines.encode()),
                                          purpose="batch")
            batch = await sdk.batches.create(input_file_id=file.id,
                                             endpoint="/v1/chat/completions",
                                             completion_window="24h")

            async def ended() -> Any:
                current = await sdk.batches.retrieve(batch.id)
                return current if current.status == "completed" else None

            done = await eventually(ended, 60)
            errors = [json.loads(line) for line in
                      (await sdk.files.content(done.error_file_id)).text.splitlines()]
    finally:
        stop.set()
        await asyncio.wait_for(tracker, 20)
    assert [e["custom_id"] for e in errors] == ["card"]
    assert errors[0]["response"]["body"]["error"]["code"] == "guardrail_blocked"
    assert not any("4111" in prompt for prompt in echo.prompts())
