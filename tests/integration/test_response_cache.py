"""The response cache end to end: the official openai SDK against a real stack.

A repeated request is answered by ingress alone (the simulator sees no second call, Kafka
carries nothing), says so in `x-sluice-cache`, and is in the ledger as a free call of
provider `cache` with the tokens it saved. Opt-outs, expiry, tenant isolation and the
semantic cache (a paraphrase above the threshold, a different question below it).
"""

from __future__ import annotations

from typing import Any

import pytest
from openai import AsyncOpenAI
from sqlalchemy import text

from broker.config import SluiceConfig, parse_config
from broker.settings import KafkaSettings
from broker.stores.keys import create_api_key
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack

# A gateway feature above the Kafka port: on the production engine only (the port's own
# behaviour is proven on both engines by tests/kafka_contract.py and the pipeline tests),
# which keeps CI within its time.
pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

QUESTION = [{"role": "user", "content": "What is the capital city of France?"}]


def cache_config() -> SluiceConfig:
    sim = {"provider": "openai", "base_url": f"{SIM_BASE}/v1", "model": "gpt-4o-mini",
           "input_usd_per_mtok": "0.15", "output_usd_per_mtok": "0.60"}
    return parse_config({
        "models": {
            "cached": {"deployments": ["sim"], "cache": {"ttl_s": 3600}},
            "brief": {"deployments": ["sim"], "cache": {"ttl_s": 1}},
            "semantic": {"deployments": ["sim"],
                         "cache": {"ttl_s": 3600, "semantic": {"threshold": 0.92}}},
        },
        "deployments": {"sim": sim},
    })


async def provider_calls(stack: Stack) -> int:
    return int((await stack.simulator.get("/stats")).json()["requests"])


async def ask(client: AsyncOpenAI, model: str, messages: list[dict[str, str]] = QUESTION,
              **params: Any) -> tuple[str | None, Any]:
    """The `x-sluice-cache` header and the parsed completion."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=12, **params)  # type: ignore[arg-type]
    return raw.headers.get("x-sluice-cache"), raw.parse()


async def kept(stack: Stack, request_id: str, *, vector: bool = False) -> None:
    """Wait until the ledger has kept the answer of `request_id` in the cache."""
    extra = " and embedding is not null" if vector else ""
    await eventually(lambda: stack.scalar(
        f"select count(*) from response_cache where request_id = :id{extra}", id=request_id))


async def test_a_repeated_request_is_answered_from_the_cache_and_ledgered_free(
        kafka_settings: KafkaSettings, database_url: str) -> None:
    async with running_stack(kafka_settings, database_url, config=cache_config()) as stack:
        client = stack.openai()
        header, first = await ask(client, "cached")
        assert header == "miss"
        await kept(stack, first.id)
        # The answer is kept from the results topic, its usage row from the usage topic:
        # one may be recorded before the other.
        await eventually(lambda: stack.scalar(
            "select count(*) = 1 from usage_events where request_id = :id", id=first.id))
        calls = await provider_calls(stack)
        spent = await stack.scalar(
            "select sum(cost_usd) from usage_events where tenant = 'acme'")

        header, again = await ask(client, "cached")
        assert header == "hit"
        assert again.id != first.id  # a request of its own, with its own ledger rows
        assert again.choices[0].message.content == first.choices[0].message.content
        assert await provider_calls(stack) == calls  # no provider call

        # The hit in the ledger: succeeded, provider `cache`, nothing billed, tokens saved.
        async def hit_row() -> Any:
            async with stack.engine.connect() as connection:
                return (await connection.execute(text(
                    "select u.provider, u.deployment, u.cache, u.cost_usd, u.input_tokens, "
                    "u.output_tokens, u.saved_input_tokens, u.saved_output_tokens, r.status "
                    "from usage_events u join requests r on r.id = u.request_id "
                    "where u.request_id = :id"), {"id": again.id})).one_or_none()
        row = await eventually(hit_row)
        assert (row.provider, row.deployment, row.cache, row.status) == (
            "cache", "cache", "hit", "succeeded")
        assert row.cost_usd == 0 and (row.input_tokens, row.output_tokens) == (0, 0)
        assert (row.saved_input_tokens, row.saved_output_tokens) == (
            first.usage.prompt_tokens, first.usage.completion_tokens)
        assert await stack.scalar(
            "select sum(cost_usd) from usage_events where tenant = 'acme'") == spent
        # Its status URL answers like any request's.
        polled = await stack.client.get(f"/v1/requests/{again.id}", headers=stack.auth)
        assert polled.json()["status"] == "succeeded"

        # A streamed request gets the stored answer as a stream, usage chunk included.
        stream = await client.chat.completions.create(
            model="cached", messages=QUESTION, max_tokens=12, stream=True,  # type: ignore[call-overload]
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        text_streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text_streamed == first.choices[0].message.content
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens
        assert await provider_calls(stack) == calls

        # Cache-Control: no-cache asks the provider again (and keeps the new answer).
        header, _ = await ask(client, "cached", extra_headers={"Cache-Control": "no-cache"})
        assert header == "miss"
        assert await provider_calls(stack) == calls + 1
        # Another parameter is another request.
        header, _ = await ask(client, "cached", temperature=0.3)
        assert header == "miss"
        assert await provider_calls(stack) == calls + 2
        await client.close()


async def test_no_store_keeps_nothing_and_another_tenant_never_gets_the_answer(
        kafka_settings: KafkaSettings, database_url: str) -> None:
    async with running_stack(kafka_settings, database_url, config=cache_config()) as stack:
        client = stack.openai()
        other = "What is the tallest mountain in Europe?"
        header, unkept = await ask(client, "cached", [{"role": "user", "content": other}],
                                   extra_headers={"Cache-Control": "no-store"})
        assert header == "miss"
        _, first = await ask(client, "cached")
        await kept(stack, first.id)
        await eventually(lambda: stack.scalar(
            "select count(*) from requests where id = :id and status = 'succeeded'",
            id=unkept.id))
        assert await stack.scalar(
            "select count(*) from response_cache where request_id = :id", id=unkept.id) == 0

        secret, _ = await create_api_key(stack.engine, "globex")
        globex = stack.openai(api_key=secret)
        calls = await provider_calls(stack)
        header, theirs = await ask(globex, "cached")
        assert header == "miss"
        assert await provider_calls(stack) == calls + 1
        await kept(stack, theirs.id)
        # Both tenants now have the answer: each is served its own.
        header, mine = await ask(client, "cached")
        assert header == "hit"
        assert await eventually(lambda: stack.scalar(
            "select tenant from requests where id = :id", id=mine.id)) == "acme"
        assert await stack.scalar(
            "select count(distinct tenant) from response_cache where model = 'cached'") == 2
        await client.close()
        await globex.close()


async def test_an_answer_expires_after_its_models_ttl(
        kafka_settings: KafkaSettings, database_url: str) -> None:
    async with running_stack(kafka_settings, database_url, config=cache_config()) as stack:
        client = stack.openai()
        _, first = await ask(client, "brief")
        await kept(stack, first.id)
        # Wait on the database's clock, not a sleep: the row's own expiry has passed.
        await eventually(lambda: stack.scalar(
            "select now() > expires_at from response_cache where request_id = :id",
            id=first.id))
        calls = await provider_calls(stack)
        header, _ = await ask(client, "brief")
        assert header == "miss"
        assert await provider_calls(stack) == calls + 1
        await client.close()


async def test_a_paraphrase_is_a_semantic_hit_and_another_question_is_not(
        kafka_settings: KafkaSettings, database_url: str) -> None:
    async with running_stack(kafka_settings, database_url, config=cache_config()) as stack:
        client = stack.openai()
        header, first = await ask(client, "semantic")
        assert header == "miss"
        await kept(stack, first.id, vector=True)
        calls = await provider_calls(stack)

        # cosine 0.97 with the first question: above the 0.92 threshold.
        header, paraphrased = await ask(client, "semantic", [
            {"role": "user", "content": "Which city is the capital of France?"}])
        assert header == "semantic-hit"
        assert paraphrased.choices[0].message.content == first.choices[0].message.content
        assert await provider_calls(stack) == calls
        assert await eventually(lambda: stack.scalar(
            "select cache from usage_events where request_id = :id", id=paraphrased.id)) \
            == "semantic-hit"

        # cosine 0.67: a similar sentence but another question, below the threshold.
        header, _ = await ask(client, "semantic", [
            {"role": "user", "content": "What is the capital city of Germany?"}])
        assert header == "miss"
        # The same last turn after another system prompt: another conversation.
        header, _ = await ask(client, "semantic", [
            {"role": "system", "content": "Answer in French."}, *QUESTION])
        assert header == "miss"
        assert await provider_calls(stack) == calls + 2
        await client.close()
