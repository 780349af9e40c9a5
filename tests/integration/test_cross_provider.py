"""Models served by Anthropic, Gemini and Azure deployments, on real Kafka and PostgreSQL.

The simulator speaks each provider's wire format; the adapters translate. A model behind
any of them is budgeted, fails over (to another provider, the request translated for it)
and is ledgered like an OpenAI one: provider, deployment and price per call.
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from sqlalchemy import text

from broker.config import SluiceConfig, parse_config
from broker.settings import KafkaSettings
from simulator import Faults, SimulatorSettings
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack

# A gateway feature above the Kafka port: on the production engine only (the port's own
# behaviour is proven on both engines by tests/kafka_contract.py and the pipeline tests),
# which keeps CI within its time.
pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

ANTHROPIC = {"provider": "anthropic", "base_url": SIM_BASE, "model": "claude-sim",
             "input_usd_per_mtok": "3", "output_usd_per_mtok": "15", "timeout_s": 2}
OPENAI = {"provider": "openai", "base_url": f"{SIM_BASE}/v1", "model": "gpt-sim",
          "input_usd_per_mtok": "0.15", "output_usd_per_mtok": "0.60", "timeout_s": 2}
GEMINI = {"provider": "gemini", "base_url": SIM_BASE, "model": "gemini-sim",
          "input_usd_per_mtok": "0.30", "output_usd_per_mtok": "2.50", "timeout_s": 2}
AZURE = {"provider": "azure-openai", "base_url": SIM_BASE, "model": "azure-sim",
         "input_usd_per_mtok": "0.15", "output_usd_per_mtok": "0.60", "timeout_s": 2}


def chain_config(**deployments: dict[str, Any]) -> SluiceConfig:
    """`assistant` served by the given deployments in order (plus a model per deployment)."""
    return parse_config({
        "models": {"assistant": {"deployments": list(deployments)},
                   **{f"only-{name}": {"deployments": [name]} for name in deployments}},
        "deployments": deployments,
        "circuit_breaker": {"consecutive_failures": 50},
    })


async def ask(stack: Stack, model: str = "assistant", **params: Any) -> Any:
    return await stack.openai().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say something kind."}], **params)


async def calls(stack: Stack, request_id: str) -> list[Any]:
    """The ledger's usage rows of one request: (provider, deployment, tokens, cost)."""
    async def rows() -> list[Any]:
        async with stack.engine.connect() as connection:
            found = (await connection.execute(text(
                "select provider, deployment, input_tokens, output_tokens, cost_usd, status "
                "from usage_events where request_id = :id order by started_at"),
                {"id": request_id})).all()
        return list(found)

    return await eventually(lambda: _nonempty(rows()))


async def _nonempty(rows: Any) -> Any:
    found = await rows
    return found or None


def cost(row: Any, input_price: str, output_price: str) -> Decimal:
    return (Decimal(input_price) * row.input_tokens
            + Decimal(output_price) * row.output_tokens) / Decimal(1_000_000)


async def test_each_provider_answers_through_the_openai_sdk_and_is_ledgered_at_its_price(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = chain_config(**{"anthropic-main": ANTHROPIC, "gemini-main": GEMINI,
                             "azure-main": AZURE, "openai-main": OPENAI})
    async with running_stack(kafka_settings, database_url, config=config) as stack:
        for deployment, settings in config.deployments.items():
            answer = await ask(stack, f"only-{deployment}")
            assert answer.choices[0].message.content
            assert answer.choices[0].finish_reason in {"stop", "length"}
            assert answer.usage is not None and answer.usage.prompt_tokens > 0
            [row] = await calls(stack, answer.id)
            assert (row.provider, row.deployment, row.status) == (
                settings.provider, deployment, "succeeded")
            assert (row.input_tokens, row.output_tokens) == (
                answer.usage.prompt_tokens, answer.usage.completion_tokens)
            assert row.cost_usd == cost(row, str(settings.input_usd_per_mtok),
                                        str(settings.output_usd_per_mtok))
        stats = (await stack.simulator.get("/stats")).json()
        for upstream in ("claude-sim", "gemini-sim", "azure-sim", "gpt-sim"):
            assert stats["requests_by_model"][upstream] == 1, stats


async def test_anthropic_overloaded_fails_over_to_openai_with_the_request_translated(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = chain_config(**{"anthropic-main": ANTHROPIC, "openai-backup": OPENAI})
    simulator = SimulatorSettings(
        model_faults={"claude-sim": Faults(error_rate=1.0, error_statuses=(529,))})
    async with running_stack(kafka_settings, database_url, config=config,
                             simulator=simulator) as stack:
        answer = await ask(stack, temperature=0.2, stop=["\n\n"], max_tokens=40)
        assert answer.choices[0].message.content
        [row] = await calls(stack, answer.id)
        assert (row.provider, row.deployment) == ("openai", "openai-backup")
        assert row.cost_usd == cost(row, "0.15", "0.60")
        stats = (await stack.simulator.get("/stats")).json()
        # Anthropic was called (and said 529, overloaded), then OpenAI answered.
        assert stats["requests_by_model"] == {"claude-sim": 1, "gpt-sim": 1}


async def test_a_parameter_anthropic_cannot_express_goes_to_the_next_provider_unbilled(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = chain_config(**{"anthropic-main": ANTHROPIC, "openai-backup": OPENAI})
    async with running_stack(kafka_settings, database_url, config=config) as stack:
        # Anthropic has no `n`: the worker skips it without calling it; OpenAI answers both.
        answer = await ask(stack, n=2)
        assert len(answer.choices) == 2
        [row] = await calls(stack, answer.id)
        assert (row.provider, row.deployment) == ("openai", "openai-backup")
        # One upstream call in all: the OpenAI one.
        assert (await stack.simulator.get("/stats")).json()["requests"] == 1
        # Served by Anthropic alone, the same request is refused, naming the parameter.
        with pytest.raises(openai.BadRequestError) as refused:
            await ask(stack, "only-anthropic-main", n=2)
        assert refused.value.code == "unsupported_parameter"
        assert refused.value.param == "n"
        assert "n" in refused.value.message
        assert (await stack.simulator.get("/stats")).json()["requests"] == 1


async def test_an_anthropic_deployment_is_held_to_its_rate_budget(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    # The account allows 20 requests per 2 s (the simulator enforces it and announces it
    # in `anthropic-ratelimit-*` headers); 50 queued requests are paced through the shared
    # budget: every one is answered and the provider refuses none.
    config = chain_config(**{"anthropic-main": {**ANTHROPIC, "rpm": 20, "window_s": 2.0}})
    simulator = SimulatorSettings(rpm=20, window_s=2.0)
    async with running_stack(kafka_settings, database_url, config=config,
                             simulator=simulator) as stack:
        ids = []
        for index in range(50):
            response = await stack.client.post("/v1/requests", headers=stack.auth, json={
                "model": "assistant", "messages": [{"role": "user", "content": f"q {index}"}]})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        await eventually(lambda: stack.scalar(
            "select count(*) = 50 from requests where status = 'succeeded'"), 60)
        stats = (await stack.simulator.get("/stats")).json()
        assert stats["requests_by_model"]["claude-sim"] == 50
        assert 429 not in {int(status) for status in stats.get("errors_by_status", {})}, stats


def anthropic_sdk(stack: Stack) -> anthropic.AsyncAnthropic:
    """The official Anthropic SDK against the stack's ingress, in-process."""
    app = stack.client._transport.app  # type: ignore[attr-defined]
    return anthropic.AsyncAnthropic(
        base_url="http://ingress", api_key=stack.api_key, max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), timeout=30))


async def test_the_anthropic_sdk_works_against_a_model_of_every_provider(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = chain_config(**{"anthropic-main": ANTHROPIC, "gemini-main": GEMINI,
                             "azure-main": AZURE, "openai-main": OPENAI})
    weather = {"name": "get_weather", "description": "Current weather in a city",
               "input_schema": {"type": "object", "required": ["city"],
                                "properties": {"city": {"type": "string"}}}}
    async with running_stack(kafka_settings, database_url, config=config) as stack:
        client = anthropic_sdk(stack)
        try:
            for deployment, settings in config.deployments.items():
                model = f"only-{deployment}"
                message = await client.messages.create(
                    model=model, max_tokens=64, system="Be brief.",
                    messages=[{"role": "user", "content": "Say something kind."}])
                assert message.type == "message" and message.role == "assistant"
                assert message.content[0].type == "text" and message.content[0].text
                assert message.stop_reason in {"end_turn", "max_tokens"}
                assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
                async with client.messages.stream(
                    model=model, max_tokens=64,
                    messages=[{"role": "user", "content": "And once more, streamed."}],
                ) as stream:
                    text = "".join([piece async for piece in stream.text_stream])
                    final = await stream.get_final_message()
                assert text and final.content[0].type == "text"
                assert final.content[0].text == text
                # A tool round trip, translated twice (Anthropic -> ours -> provider).
                call = await client.messages.create(
                    model=model, max_tokens=64, tools=[weather],
                    tool_choice={"type": "tool", "name": "get_weather"},
                    messages=[{"role": "user", "content": "Weather in Oslo?"}])
                [use] = [block for block in call.content if block.type == "tool_use"]
                assert call.stop_reason == "tool_use" and use.name == "get_weather"
                answer = await client.messages.create(
                    model=model, max_tokens=64, tools=[weather], messages=[
                        {"role": "user", "content": "Weather in Oslo?"},
                        {"role": "assistant", "content": call.content},
                        {"role": "user", "content": [{"type": "tool_result",
                                                      "tool_use_id": use.id,
                                                      "content": "Sunny, 21 C"}]}])
                assert answer.content[0].type == "text" and answer.content[0].text
                # Four calls, all billed to the provider that answered them.
                providers = await eventually(partial(
                    stack.scalar, "select array_agg(distinct provider) from usage_events "
                    "where model = :model having count(*) = 4", model=model))
                assert providers == [settings.provider], (deployment, providers)
        finally:
            await client.close()
