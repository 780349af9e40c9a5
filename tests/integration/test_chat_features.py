"""Every OpenAI chat feature through the real stack, with the official openai SDK.

Tools, structured outputs, image parts, n > 1, logprobs, reasoning effort and parameters
sluicegate has never heard of go through ingress, Kafka, a worker and the HTTP adapter to
the simulator and back; the ledger bills what the provider reported.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from broker.settings import KafkaSettings
from simulator import SimulatorSettings
from simulator.settings import Faults
from tests.integration.stack import Stack, eventually, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.dev_broker]

MODEL = "gpt-4o-mini"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city", "strict": True,
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}


class Forecast(BaseModel):
    city: str
    celsius: float
    sunny: bool


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(kafka_settings, database_url) as running:
        yield running


@pytest.fixture
async def sdk(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    client = stack.openai()
    yield client
    await client.close()


async def _usage_row(stack: Stack, request_id: str) -> tuple[int, int, int]:
    async def row() -> tuple[int, int, int] | None:
        async with stack.engine.connect() as connection:
            from sqlalchemy import text
            found = (await connection.execute(text(
                "select input_tokens, output_tokens, reasoning_output_tokens from usage_events "
                "where request_id = :id"), {"id": request_id})).first()
        return None if found is None else (found[0], found[1], found[2])

    return await eventually(row)


async def test_a_tool_call_round_trip(stack: Stack, sdk: AsyncOpenAI) -> None:
    messages: list[dict[str, object]] = [
        {"role": "user", "content": "What's the weather in Oslo?"}]
    first = await sdk.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="auto",  # type: ignore[list-item,arg-type]
        parallel_tool_calls=False)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in {"celsius", "fahrenheit"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 4}'}]
    second = await sdk.chat.completions.create(model=MODEL, messages=messages,  # type: ignore[arg-type]
                                               tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    assert second.usage is not None and first.usage is not None
    # The tool result and the earlier call are part of the prompt now, and were billed.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert (await _usage_row(stack, second.id))[0] == second.usage.prompt_tokens


async def test_structured_output_parses_into_the_callers_model(sdk: AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Forecast for Bergen."}],
        response_format=Forecast)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Forecast)
    json_mode = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"})
    assert isinstance(json.loads(json_mode.choices[0].message.content or ""), dict)


def _png(width: int, height: int) -> str:
    head = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", width, height)
            + b"\x08\x02\x00\x00\x00")
    return "data:image/png;base64," + base64.b64encode(head).decode()


async def test_an_image_part_with_several_choices_and_logprobs(
    stack: Stack, sdk: AsyncOpenAI,
) -> None:
    text_only = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe it."}])
    completion = await sdk.chat.completions.create(
        model=MODEL, n=2, logprobs=True, top_logprobs=2, seed=3,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Describe it."},
            {"type": "image_url", "image_url": {"url": _png(1024, 1024), "detail": "high"}}]}])
    assert [choice.index for choice in completion.choices] == [0, 1]
    for choice in completion.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert len(choice.logprobs.content[0].top_logprobs) == 2
    assert completion.usage is not None and text_only.usage is not None
    # OpenAI's tile formula: a 1024x1024 image at high detail is 765 tokens.
    assert completion.usage.prompt_tokens == text_only.usage.prompt_tokens + 765
    input_tokens, output_tokens, _ = await _usage_row(stack, completion.id)
    assert (input_tokens, output_tokens) == (completion.usage.prompt_tokens,
                                             completion.usage.completion_tokens)


async def test_reasoning_tokens_are_billed_in_their_own_column(
    stack: Stack, sdk: AsyncOpenAI,
) -> None:
    completion = await sdk.chat.completions.create(
        model=MODEL, reasoning_effort="low",
        messages=[{"role": "user", "content": "Think, then answer."}])
    assert completion.usage is not None
    details = completion.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == 16
    _, output_tokens, reasoning = await _usage_row(stack, completion.id)
    assert (output_tokens, reasoning) == (completion.usage.completion_tokens, 16)


async def test_unknown_parameters_are_forwarded_and_a_providers_refusal_relayed(
    sdk: AsyncOpenAI,
) -> None:
    completion = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}],
        extra_body={"a_parameter_openai_adds_next_year": {"on": True}}, store=False,
        metadata={"team": "search"}, service_tier="auto")
    assert completion.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=7)
    assert "temperature" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as malformed:
        await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": [{"type": "image_url"}]}])  # type: ignore[list-item]
    assert "messages[0].content[0]" in str(malformed.value)


async def test_streaming_with_usage_through_the_queue(stack: Stack, sdk: AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Stream a short answer."}])
    chunks = [chunk async for chunk in stream]
    assert len({chunk.id for chunk in chunks}) == 1
    request_id = chunks[0].id
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert (await _usage_row(stack, request_id))[:2] == (usage.prompt_tokens,
                                                         usage.completion_tokens)
    # The ledger keeps the whole answer the client saw.
    stored = await eventually(lambda: stack.scalar(
        "select result->'completion'->'choices'->0->'message'->>'content' from requests "
        "where id = :id", id=request_id))
    assert stored == text


async def test_streaming_without_usage_and_with_tool_calls(sdk: AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, stream=True, tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Weather in Oslo?"}])
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)  # the client did not ask for it
    arguments = "".join(
        call.function.arguments or "" for chunk in chunks for choice in chunk.choices
        for call in choice.delta.tool_calls or () if call.function)
    assert set(json.loads(arguments)) == {"city", "unit"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_a_stream_broken_mid_answer_ends_with_an_error_event(
    kafka_settings: KafkaSettings, database_url: str,
) -> None:
    cutting = SimulatorSettings(faults=Faults(stream_cut_rate=1.0))
    async with running_stack(kafka_settings, database_url, simulator=cutting) as stack:
        client = stack.openai()
        stream = await client.chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "Go on."}])
        received = []
        with pytest.raises(openai.APIError, match="broke off"):
            async for chunk in stream:  # never a clean end without [DONE]
                received.append(chunk)
        assert received and received[0].id.startswith("req_")
        request_id = received[0].id
        status = await eventually(lambda: stack.scalar(
            "select status from requests where id = :id and status <> 'queued'",
            id=request_id))
        assert status == "failed"
        # What was generated before the break is billed, once.
        billed = await eventually(lambda: stack.scalar(
            "select output_tokens from usage_events where request_id = :id", id=request_id))
        assert billed > 0
        await client.close()


async def test_tools_and_structured_outputs_asynchronously_and_in_a_batch(
    kafka_settings: KafkaSettings, database_url: str,
) -> None:
    from tests.integration.test_batches import FINAL, _jsonl, _lines, _until, batch_stack

    schema = {"name": "forecast", "strict": True, "schema": Forecast.model_json_schema()}
    tool_body = {"model": MODEL, "tools": [WEATHER_TOOL],
                 "messages": [{"role": "user", "content": "Weather in Oslo?"}]}
    json_body = {"model": MODEL, "response_format": {"type": "json_schema", "json_schema": schema},
                 "messages": [{"role": "user", "content": "Forecast, please."}]}
    async with batch_stack(kafka_settings, database_url) as stack:
        accepted = await stack.client.post("/v1/requests", headers=stack.auth, json=tool_body)
        assert accepted.status_code == 202
        status_url = accepted.json()["status_url"].replace("http://ingress", "")

        async def final() -> dict[str, Any] | None:
            state = (await stack.client.get(status_url, headers=stack.auth)).json()
            return state if state["status"] == "succeeded" else None

        state = await eventually(final)
        (call,) = state["result"]["choices"][0]["message"]["tool_calls"]
        assert json.loads(call["function"]["arguments"])["unit"] in {"celsius", "fahrenheit"}

        client = stack.openai()
        lines = [{"custom_id": "tool", "method": "POST", "url": "/v1/chat/completions",
                  "body": tool_body},
                 {"custom_id": "json", "method": "POST", "url": "/v1/chat/completions",
                  "body": json_body}]
        uploaded = await client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
        created = await client.batches.create(input_file_id=uploaded.id,
                                              endpoint="/v1/chat/completions",
                                              completion_window="24h")
        batch = await _until(client, created.id, FINAL)
        assert batch.status == "completed", batch
        answers = {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]
                   for line in await _lines(client, batch.output_file_id)}
        assert answers["tool"]["tool_calls"][0]["function"]["name"] == "get_weather"
        Forecast.model_validate_json(answers["json"]["content"])
        await client.close()
