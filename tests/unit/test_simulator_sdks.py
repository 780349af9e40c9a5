"""The vendors' own SDKs against the simulator on a real loopback server.

If the official `anthropic`, `google-genai` and `openai` (Azure) clients parse what the
simulator sends (messages, streams, usage, typed errors), the simulator is a faithful
stand-in for those providers in budget, failover and ledger tests. Offline: the SDKs only
ever talk to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anthropic
import openai
import pytest
import uvicorn
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from simulator import Faults, SimulatorSettings, create_simulator_app

CLAUDE = "claude-sonnet-4-5"
GEMINI = "gemini-2.0-flash"
DEPLOYMENT = "gpt4o-eastus"
WEATHER_TOOL: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}
# google-genai's async client subclasses aiohttp's session (its default transport when
# aiohttp is installed, as here), which aiohttp flags; the warning is theirs, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession:DeprecationWarning")
FAILING = {"claude-overloaded": Faults(error_rate=1.0, error_statuses=(529,)),
           "gemini-down": Faults(error_rate=1.0, error_statuses=(503,))}


@asynccontextmanager
async def _serving(settings: SimulatorSettings) -> AsyncIterator[str]:
    listening = socket.create_server(("127.0.0.1", 0))  # accepts before uvicorn starts
    server = uvicorn.Server(uvicorn.Config(create_simulator_app(settings),
                                           log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving
        listening.close()


@pytest.fixture
async def simulator() -> AsyncIterator[str]:
    async with _serving(SimulatorSettings(model_faults=FAILING)) as url:
        yield url


def _claude(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key="sk-ant-test", max_retries=0)


def _gemini(url: str, version: str | None = None) -> genai.Client:
    return genai.Client(api_key="AIza-test",
                        http_options=types.HttpOptions(base_url=url, api_version=version))


# --- Anthropic -------------------------------------------------------------------------


async def test_anthropic_message_with_system_prompt_and_token_count(simulator: str) -> None:
    async with _claude(simulator) as client:
        message = await client.messages.create(
            model=CLAUDE, max_tokens=64, system="Be terse.",
            messages=[{"role": "user", "content": "Name a river."}])
        counted = await client.messages.count_tokens(
            model=CLAUDE, system="Be terse.",
            messages=[{"role": "user", "content": "Name a river."}])
    assert message.id.startswith("msg_") and message.model == CLAUDE
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert block.type == "text" and block.text.endswith(".")
    assert message.usage.output_tokens == 16
    assert counted.input_tokens == message.usage.input_tokens > 0


async def test_anthropic_tool_use_round_trip(simulator: str) -> None:
    asked: list[anthropic.types.MessageParam] = [
        {"role": "user", "content": "What is the weather in Paris?"}]
    async with _claude(simulator) as client:
        called = await client.messages.create(model=CLAUDE, max_tokens=64, messages=asked,
                                              tools=[WEATHER_TOOL])
        use = called.content[0]
        assert called.stop_reason == "tool_use" and use.type == "tool_use"
        answered = await client.messages.create(model=CLAUDE, max_tokens=64, tools=[WEATHER_TOOL],
                                                messages=[
            *asked, {"role": "assistant", "content": called.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": "18 degrees and sunny"}]}])
    assert use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"


async def test_anthropic_stream_helpers_assemble_the_message(simulator: str) -> None:
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Name a river."}]
    async with _claude(simulator) as client:
        whole = await client.messages.create(model=CLAUDE, max_tokens=64, messages=messages)
        async with client.messages.stream(model=CLAUDE, max_tokens=64,
                                          messages=messages) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        raw = await client.messages.create(model=CLAUDE, max_tokens=64, messages=messages,
                                           stream=True)
        kinds = [event.type async for event in raw]
    assert whole.content[0].type == "text" and text == whole.content[0].text
    assert [block.model_dump(exclude={"parsed_output"}) for block in final.content] == \
        [block.model_dump() for block in whole.content]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "content_block_delta" in kinds


async def test_anthropic_usage_reports_the_prompt_cache(simulator: str) -> None:
    system: list[anthropic.types.TextBlockParam] = [{
        "type": "text", "text": "You answer questions about rivers. " * 60,
        "cache_control": {"type": "ephemeral"}}]
    async with _claude(simulator) as client:
        first, second = [await client.messages.create(
            model=CLAUDE, max_tokens=16, system=system,
            messages=[{"role": "user", "content": question}])
            for question in ("Name a river.", "Name a lake.")]
    assert first.usage.cache_creation_input_tokens
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0


async def test_anthropic_errors_are_the_sdks_typed_exceptions(simulator: str) -> None:
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]
    async with _claude(simulator) as client:
        with pytest.raises(anthropic.InternalServerError) as overloaded:
            await client.messages.create(model="claude-overloaded", max_tokens=8,
                                         messages=messages)
    assert overloaded.value.status_code == 529
    assert isinstance(overloaded.value, anthropic.OverloadedError)
    async with _serving(SimulatorSettings(rpm=1)) as url, _claude(url) as client:
        await client.messages.create(model=CLAUDE, max_tokens=8, messages=messages)
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model=CLAUDE, max_tokens=8, messages=messages)
    assert limited.value.response.headers["retry-after"] == "60"
    assert limited.value.request_id == limited.value.response.headers["request-id"]


async def test_anthropic_cut_stream_raises_the_overloaded_error() -> None:
    settings = SimulatorSettings(faults=Faults(stream_cut_rate=1.0))
    async with _serving(settings) as url, _claude(url) as client:
        with pytest.raises(anthropic.APIStatusError) as cut:
            async with client.messages.stream(model=CLAUDE, max_tokens=64, messages=[
                    {"role": "user", "content": "Name a river."}]) as stream:
                await stream.get_final_message()
    assert cut.value.body == {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded (simulated)."}}


# --- Gemini ----------------------------------------------------------------------------


async def test_gemini_content_with_system_instruction_and_usage(simulator: str) -> None:
    async with _gemini(simulator).aio as client:
        response = await client.models.generate_content(
            model=GEMINI, contents="Name a river.",
            config=types.GenerateContentConfig(system_instruction="Be terse."))
        short = await client.models.generate_content(
            model=GEMINI, contents="Name a river.",
            config=types.GenerateContentConfig(max_output_tokens=3))
        counted = await client.models.count_tokens(model=GEMINI, contents="Name a river.")
    assert response.text and response.text.endswith(".")
    usage = response.usage_metadata
    assert usage is not None and usage.candidates_token_count == 16
    assert usage.total_token_count == (usage.prompt_token_count or 0) + 16
    assert response.model_version == GEMINI
    assert short.candidates and short.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert counted.total_tokens and counted.total_tokens > 0


async def test_gemini_function_call_round_trip(simulator: str) -> None:
    weather = types.Tool(function_declarations=[types.FunctionDeclaration(
        name="get_weather", description="Current weather in a city.",
        parameters=types.Schema(type=types.Type.OBJECT, required=["city"],
                                properties={"city": types.Schema(type=types.Type.STRING)}))])
    config = types.GenerateContentConfig(tools=[weather])
    asked = types.Content(role="user", parts=[types.Part.from_text(text="Weather in Paris?")])
    async with _gemini(simulator, "v1beta").aio as client:
        called = await client.models.generate_content(model=GEMINI, contents=[asked],
                                                      config=config)
        assert called.function_calls and called.candidates and called.candidates[0].content
        call = called.function_calls[0]
        answered = await client.models.generate_content(model=GEMINI, config=config, contents=[
            asked, called.candidates[0].content,
            types.Content(role="user", parts=[types.Part.from_function_response(
                name="get_weather", response={"temperature_c": 18})])])
    assert call.name == "get_weather" and call.args and "city" in call.args
    assert answered.text and not answered.function_calls


async def test_gemini_stream_assembles_the_text(simulator: str) -> None:
    async with _gemini(simulator).aio as client:
        whole = await client.models.generate_content(model=GEMINI, contents="Name a river.")
        chunks = [chunk async for chunk in await client.models.generate_content_stream(
            model=GEMINI, contents="Name a river.")]
    assert len(chunks) > 1
    assert "".join(chunk.text or "" for chunk in chunks) == whole.text
    assert chunks[-1].usage_metadata == whole.usage_metadata


async def test_gemini_errors_are_the_sdks_typed_exceptions(simulator: str) -> None:
    async with _gemini(simulator).aio as client:
        with pytest.raises(genai_errors.ServerError) as down:
            await client.models.generate_content(model="gemini-down", contents="hi")
    assert (down.value.code, down.value.status) == (503, "UNAVAILABLE")
    async with _serving(SimulatorSettings(rpm=1)) as url, _gemini(url).aio as client:
        await client.models.generate_content(model=GEMINI, contents="hi")
        with pytest.raises(genai_errors.ClientError) as limited:
            await client.models.generate_content(model=GEMINI, contents="hi")
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert limited.value.details["error"]["details"][0]["retryDelay"] == "60s"


async def test_gemini_embeddings(simulator: str) -> None:
    async with _gemini(simulator).aio as client:
        answer = await client.models.embed_content(model="text-embedding-004",
                                                   contents=["river", "lake"])
    assert answer.embeddings and [len(e.values or []) for e in answer.embeddings] == [768, 768]


# --- Azure OpenAI ----------------------------------------------------------------------


def _azure(url: str) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(azure_endpoint=url, api_version="2024-10-21",
                                   api_key="azure-key", max_retries=0)


async def test_azure_chat_stream_and_embeddings(simulator: str) -> None:
    async with _azure(simulator) as client:
        completion = await client.chat.completions.create(
            model=DEPLOYMENT, messages=[{"role": "user", "content": "Name a river."}])
        stream = await client.chat.completions.create(
            model=DEPLOYMENT, messages=[{"role": "user", "content": "Name a river."}],
            stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        embedded = await client.embeddings.create(model=DEPLOYMENT, input="river")
    assert completion.model == DEPLOYMENT
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == completion.choices[0].message.content
    assert chunks[-1].usage == completion.usage
    assert len(embedded.data[0].embedding) == 1536


async def test_azure_rate_limit_is_the_sdks_rate_limit_error() -> None:
    async with _serving(SimulatorSettings(rpm=1)) as url, _azure(url) as client:
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [
            {"role": "user", "content": "hi"}]
        await client.chat.completions.create(model=DEPLOYMENT, messages=messages)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model=DEPLOYMENT, messages=messages)
    assert 59_000 < int(limited.value.response.headers["retry-after-ms"]) <= 60_000
    assert limited.value.code == "429"
