"""Ingress -> Kafka -> worker -> simulated provider -> result and ledger row, for real."""

from __future__ import annotations

import httpx
import pytest
from openai import AsyncOpenAI

from broker.settings import IngressSettings, KafkaSettings
from broker.tokens import count_chat_prompt_tokens
from schemas import ChatMessage
from simulator import SimulatorSettings
from tests.integration.stack import Stack, eventually, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.dev_broker]

HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there!"}]}


async def _usage_rows(stack: Stack, request_id: str) -> int:
    return int(
        await stack.scalar(
            "select count(*) from usage_events where request_id = :id", id=request_id
        )
    )


async def test_sync_completion_and_one_ledger_row(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        response = await stack.client.post("/v1/chat/completions", json=HELLO, headers=stack.auth)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "chat.completion"
        assert body["id"] == response.headers["x-request-id"]
        assert body["choices"][0]["message"]["content"]
        expected_prompt = count_chat_prompt_tokens(
            [ChatMessage(role="user", content="Hello there!")], "gpt-4o-mini"
        )
        assert body["usage"]["prompt_tokens"] == expected_prompt
        await eventually(lambda: _usage_rows(stack, body["id"]))
        row = await stack.scalar(
            "select json_build_object('tenant', tenant, 'in', input_tokens, "
            "'out', output_tokens, 'cost', cost_usd::text, 'provider', provider) "
            "from usage_events where request_id = :id",
            id=body["id"],
        )
        assert row["tenant"] == "acme"
        assert row["in"] == expected_prompt
        assert row["out"] == body["usage"]["completion_tokens"]
        assert row["cost"] is not None and float(row["cost"]) > 0
        assert await _usage_rows(stack, body["id"]) == 1
        status = await eventually(
            lambda: stack.scalar(
                "select status from requests where id = :id and status <> 'queued'", id=body["id"]
            )
        )
        assert status == "succeeded"
        # Answered in time: nothing kept for polling (its id only came with the answer).
        assert len(stack.ingress.accepted) == 0


@pytest.mark.parametrize("route", ["prefer", "requests"])
async def test_async_submission_then_poll(
    kafka_settings: KafkaSettings, database_url: str, route: str
) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        if route == "prefer":
            headers = {**stack.auth, "Prefer": "respond-async"}
            accepted = await stack.client.post("/v1/chat/completions", json=HELLO, headers=headers)
        else:
            accepted = await stack.client.post("/v1/requests", json=HELLO, headers=stack.auth)
        assert accepted.status_code == 202, accepted.text
        ticket = accepted.json()
        assert ticket["status"] == "queued"
        assert ticket["status_url"].endswith(f"/v1/requests/{ticket['id']}")
        first = await stack.client.get(f"/v1/requests/{ticket['id']}", headers=stack.auth)
        assert first.status_code == 200  # known at once, even before the ledger records it

        async def finished() -> dict[str, object] | None:
            state = (await stack.client.get(ticket["status_url"], headers=stack.auth)).json()
            return state if state["status"] == "succeeded" else None

        state = await eventually(finished)
        assert state["result"]["object"] == "chat.completion"  # type: ignore[index]
        assert state["result"]["id"] == ticket["id"]  # type: ignore[index]

        # The result and its usage event travel on two topics: on Apache Kafka the ledger
        # can record the result one fetch before the usage (seen once in CI).
        async def billed_once() -> bool:
            return await _usage_rows(stack, ticket["id"]) == 1

        await eventually(billed_once)


async def test_openai_sdk_works_unchanged(kafka_settings: KafkaSettings, database_url: str) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        sdk = AsyncOpenAI(
            base_url="http://ingress/v1",
            api_key=stack.api_key,
            http_client=httpx.AsyncClient(transport=stack.client._transport),
        )
        completion = await sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hi"},
            ],
            max_tokens=5,
        )
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens <= 5
        models = await sdk.models.list()
        assert [m.id for m in models.data] == ["gpt-4o-mini"]
        await sdk.close()


async def test_slow_answer_times_out_with_status_url_and_still_completes(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(
        kafka_settings,
        database_url,
        simulator=SimulatorSettings(latency_ms=1500),
        ingress=IngressSettings(sync_timeout_s=0.3),
    ) as stack:
        response = await stack.client.post("/v1/chat/completions", json=HELLO, headers=stack.auth)
        assert response.status_code == 504
        body = response.json()
        assert body["error"]["code"] == "request_pending"
        assert body["status_url"].endswith(body["id"])
        # Known at once, even before the ledger records it.
        assert stack.ingress.accepted.lookup(body["id"]) == ("acme", "gpt-4o-mini")
        early = await stack.client.get(body["status_url"], headers=stack.auth)
        assert early.status_code == 200, early.text

        async def finished() -> bool:
            state = (await stack.client.get(body["status_url"], headers=stack.auth)).json()
            return bool(state["status"] == "succeeded")

        await eventually(finished)


async def test_models_list_and_tenant_isolation(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        models = await stack.client.get("/v1/models", headers=stack.auth)
        assert models.json() == {
            "object": "list",
            "data": [
                {
                    "id": "gpt-4o-mini",
                    "object": "model",
                    "created": models.json()["data"][0]["created"],
                    "owned_by": "sluicegate",
                }
            ],
        }
        accepted = await stack.client.post("/v1/requests", json=HELLO, headers=stack.auth)
        request_id = accepted.json()["id"]
        await eventually(
            lambda: stack.scalar(
                "select 1 from requests where id = :id and status = 'succeeded'", id=request_id
            )
        )
        from broker.stores.keys import create_api_key

        other_key, _ = await create_api_key(stack.engine, "someone-else")
        other = await stack.client.get(
            f"/v1/requests/{request_id}", headers={"Authorization": f"Bearer {other_key}"}
        )
        assert other.status_code == 404
        assert other.json()["error"]["code"] == "not_found"
