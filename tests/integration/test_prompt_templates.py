"""Prompt templates end to end: created over the admin API, called through httpx and the
openai SDK, sync, streamed and async; versions change the answer; the ledger records
template and version."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from pydantic import SecretStr
from sqlalchemy import text

from broker.config import SluiceConfig, parse_config
from broker.settings import IngressSettings, KafkaSettings
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

ADMIN = "templates-admin-" + "0123456789abcdef" * 3
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}

GREET: dict[str, Any] = {
    "name": "greet",
    "messages": [{"role": "system", "content": "You are {{ persona }}."},
                 {"role": "user", "content": "Say hello to {{ name }}."}],
    "parameters": {"model": "gpt-4o-mini", "temperature": 0.2},
    "variables": [{"name": "name", "type": "string", "required": True},
                  {"name": "persona", "type": "string", "default": "a terse assistant"}],
}
# Version 2: another prompt, and a parameter that cuts the answer short.
GREET_V2 = GREET | {
    "messages": [{"role": "user", "content": "Greet {{ name }} warmly, as {{ persona }}."}],
    "parameters": {"model": "gpt-4o-mini", "max_tokens": 3},
}


async def create(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    response = await stack.client.post("/v1/admin/templates", json=spec, headers=ADMIN_AUTH)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def call(stack: Stack, body: dict[str, Any], **headers: str) -> Any:
    return await stack.client.post("/v1/templates/greet/completions", json=body,
                                   headers={**stack.auth, **headers})


async def recorded(stack: Stack, request_id: str, status: str) -> Any:
    async def row() -> Any:
        async with stack.engine.connect() as connection:
            # `lane` comes with the request record, as the template does: the ledger may
            # have recorded the result first.
            return (await connection.execute(text(
                "SELECT template, template_version FROM requests "
                "WHERE id = :id AND status = :status AND lane IS NOT NULL"),
                {"id": request_id, "status": status})).one_or_none()

    return tuple(await eventually(row))


async def test_templates_run_sync_streamed_and_async_and_reach_the_ledger(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    settings = IngressSettings(sync_timeout_s=20, admin_key=SecretStr(ADMIN))
    async with running_stack(kafka_settings, database_url, ingress=settings) as stack:
        # Only the admin key manages templates.
        refused = await stack.client.post("/v1/admin/templates", json=GREET, headers=stack.auth)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "insufficient_role"
        first = await create(stack, GREET)
        assert (first["name"], first["version"]) == ("greet", 1)

        # Sync through the openai SDK: the answer is the rendered prompt's answer.
        client = stack.openai()
        async with client:
            answer = await client.post("/templates/greet/completions", cast_to=ChatCompletion,
                                       body={"variables": {"name": "Ada"}})
            direct = await client.chat.completions.create(
                model="gpt-4o-mini", temperature=0.2, messages=[
                    {"role": "system", "content": "You are a terse assistant."},
                    {"role": "user", "content": "Say hello to Ada."}])
        assert answer.choices[0].message.content == direct.choices[0].message.content
        assert answer.choices[0].finish_reason == "stop"

        # Version 2 is a new, immutable version; calls without `version` get it.
        second = await create(stack, GREET_V2)
        assert second["version"] == 2
        latest = await call(stack, {"variables": {"name": "Ada"}})
        assert latest.status_code == 200, latest.text
        v2_text = latest.json()["choices"][0]["message"]["content"]
        assert v2_text != answer.choices[0].message.content
        assert latest.json()["choices"][0]["finish_reason"] == "length"  # max_tokens: 3
        pinned = await call(stack, {"variables": {"name": "Ada"}, "version": 1})
        assert pinned.json()["choices"][0]["message"]["content"] == \
            answer.choices[0].message.content

        # Streamed: an override of the template's parameters.
        async with stack.client.stream(
                "POST", "/v1/templates/greet/completions", headers=stack.auth,
                json={"variables": {"name": "Ada"}, "stream": True}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            events = [line async for line in streamed.aiter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]"

        # Async: 202 with a status URL, then the answer of version 2.
        accepted = await call(stack, {"variables": {"name": "Ada"}}, Prefer="respond-async")
        assert accepted.status_code == 202, accepted.text
        ticket = accepted.json()

        async def finished() -> dict[str, Any] | None:
            state: dict[str, Any] = (await stack.client.get(
                ticket["status_url"], headers=stack.auth)).json()
            return state if state["status"] == "succeeded" else None

        state = await eventually(finished)
        assert state is not None
        assert state["result"]["choices"][0]["message"]["content"] == v2_text
        # Finished template calls keep their template in the ledger, whichever of request
        # and result the ledger read first.
        assert await recorded(stack, ticket["id"], "succeeded") == ("greet", 2)
        assert await recorded(stack, latest.headers["x-request-id"], "succeeded") == (
            "greet", 2)

        # The admin API lists and shows versions.
        listed = (await stack.client.get("/v1/admin/templates", headers=ADMIN_AUTH)).json()
        assert [(t["name"], t["version"]) for t in listed["data"]] == [("greet", 2)]
        shown = await stack.client.get("/v1/admin/templates/greet?version=1",
                                       headers=ADMIN_AUTH)
        assert shown.json()["messages"] == GREET["messages"]


async def test_template_calls_refuse_bad_variables_and_the_sandbox_holds(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    settings = IngressSettings(sync_timeout_s=20, admin_key=SecretStr(ADMIN))
    async with running_stack(kafka_settings, database_url, ingress=settings) as stack:
        await create(stack, GREET)

        missing = await call(stack, {"variables": {}})
        assert missing.status_code == 400
        assert missing.json()["error"]["param"] == "variables.name"
        assert "'name'" in missing.json()["error"]["message"]

        wrong = await call(stack, {"variables": {"name": 7}})
        assert (wrong.status_code, wrong.json()["error"]["param"]) == (400, "variables.name")

        unknown = await stack.client.post("/v1/templates/nope/completions", headers=stack.auth,
                                          json={"variables": {}})
        assert unknown.status_code == 404
        no_version = await call(stack, {"variables": {"name": "Ada"}, "version": 9})
        assert no_version.status_code == 404

        # A template that reaches for Python internals renders nothing: 400, no request.
        bad = await stack.client.post("/v1/admin/templates", headers=ADMIN_AUTH, json=GREET | {
            "name": "escape", "messages": [{"role": "user",
                                           "content": "{{ name.__class__.__mro__ }}"}]})
        assert bad.status_code == 201
        escaped = await stack.client.post("/v1/templates/escape/completions",
                                          headers=stack.auth, json={"variables": {"name": "x"}})
        assert escaped.status_code == 400
        assert "unsafe" in escaped.json()["error"]["message"]

        undeclared = await stack.client.post("/v1/admin/templates", headers=ADMIN_AUTH,
                                             json=GREET | {"name": "x", "messages": [
                                                 {"role": "user", "content": "{{ who }}"}]})
        assert undeclared.status_code == 400
        assert undeclared.json()["error"]["param"] == "messages.0.content"
        assert await stack.scalar("SELECT count(*) FROM requests") == 0


def held_config() -> SluiceConfig:
    """`gpt-4o-mini`, and `held`: a rate budget so small (one call an hour) that its
    requests wait in the queue."""
    deployment = {"provider": "openai", "base_url": f"{SIM_BASE}/v1", "model": "gpt-4o-mini",
                  "input_usd_per_mtok": "0.15", "output_usd_per_mtok": "0.60"}
    return parse_config({
        "models": {"gpt-4o-mini": {"deployments": ["sim"]}, "held": {"deployments": ["held"]}},
        "deployments": {"sim": deployment,
                        "held": deployment | {"rpm": 1, "window_s": 3600}},
    })


async def test_the_ledger_records_template_and_version(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    settings = IngressSettings(sync_timeout_s=20, admin_key=SecretStr(ADMIN))
    async with running_stack(kafka_settings, database_url, ingress=settings,
                             config=held_config()) as stack:
        await create(stack, GREET)
        await create(stack, GREET_V2 | {"parameters": {"model": "held"}})
        # The held deployment's budget holds requests in the queue, so the ledger records
        # each request before any result of it.
        waiting = await call(stack, {"variables": {"name": "Bo"}, "version": 2},
                             Prefer="respond-async")
        # Version 1 runs on gpt-4o-mini; a call may override its parameters, the model too.
        older = await call(stack, {"variables": {"name": "Cy"}, "version": 1, "model": "held"},
                           Prefer="respond-async")
        assert (waiting.status_code, older.status_code) == (202, 202)
        assert await recorded(stack, waiting.json()["id"], "queued") == ("greet", 2)
        assert await recorded(stack, older.json()["id"], "queued") == ("greet", 1)
        plain = await stack.client.post("/v1/chat/completions", headers={
            **stack.auth, "Prefer": "respond-async"}, json={
                "model": "held", "messages": [{"role": "user", "content": "hi"}]})
        assert await recorded(stack, plain.json()["id"], "queued") == (None, None)

