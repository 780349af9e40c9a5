"""The Anthropic translation back: messages and streamed events to the unified form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.errors import ProviderRetriable
from schemas.chat import Usage
from workers.providers.anthropic_answers import usage_from_anthropic
from workers.providers.anthropic_format import (
    ANSWER_TOOL,
    AnthropicStreamTranslator,
    from_anthropic_message,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"


def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def _events(name: str) -> list[dict[str, Any]]:
    """The JSON of each `data:` line of a stream fixture (SSE, in Anthropic's documented shape)."""
    return [json.loads(line[5:]) for line in (FIXTURES / name).read_text().splitlines()
            if line.startswith("data:")]


# --- answers ---------------------------------------------------------------------------


def test_a_text_message_becomes_a_completion() -> None:
    completion = from_anthropic_message(_fixture("message_text.json"), created=1700000000)
    assert completion.id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert completion.model == "claude-sonnet-4-20250514"
    assert completion.created == 1700000000
    assert completion.choices[0].message.content == "Hi! My name is Claude."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (2095, 503, 2598)


def test_tool_use_becomes_tool_calls_and_cache_writes_count_as_prompt() -> None:
    completion = from_anthropic_message(_fixture("message_tool_use.json"))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check the current weather in San Francisco for you."
    [call] = choice.message.tool_calls or []
    assert call.id == "toolu_01A09q90qw90lq917835lq9"
    assert call.function is not None and call.function.name == "get_weather"
    assert json.loads(call.function.arguments or "") == {
        "location": "San Francisco, CA", "unit": "celsius"}
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 21 + 188086
    assert usage.cache_write_prompt_tokens() == 188086
    assert usage.cached_prompt_tokens() == 0


def test_thinking_becomes_reasoning_content_and_cache_reads_cached_tokens() -> None:
    completion = from_anthropic_message(_fixture("message_thinking.json"))
    message = completion.choices[0].message
    extra = message.model_extra or {}
    assert message.content == "Based on my analysis..."
    assert extra["reasoning_content"] == "Let me analyze this step by step..."
    assert [block["type"] for block in extra["thinking_blocks"]] == [
        "thinking", "redacted_thinking"]
    assert extra["thinking_blocks"][0]["signature"].startswith("WaUjzkyp")
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.cached_prompt_tokens()) == (1850, 1800)
    assert usage.reasoning_completion_tokens() == 600


def test_the_answer_tools_input_is_the_content() -> None:
    completion = from_anthropic_message({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "tool_use", "id": "toolu_9", "name": ANSWER_TOOL,
                     "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7}})
    choice = completion.choices[0]
    assert json.loads(choice.message.content or "") == {"city": "Paris"}
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter")])
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    data = {**_fixture("message_text.json"), "stop_reason": stop_reason}
    assert from_anthropic_message(data).choices[0].finish_reason == finish


def test_a_body_that_is_not_a_message_is_an_error() -> None:
    with pytest.raises(ValueError):
        from_anthropic_message({"type": "error", "error": {"type": "api_error"}})


# --- streamed answers ------------------------------------------------------------------


def _translate(events: list[dict[str, Any]]) -> tuple[AnthropicStreamTranslator,
                                                       list[dict[str, Any]]]:
    translator = AnthropicStreamTranslator("claude-1", created=1700000000)
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    return translator, chunks


def test_a_text_stream_becomes_openai_chunks_ending_with_usage() -> None:
    translator, chunks = _translate(_events("stream_text.sse"))
    assert translator.finished
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [chunk["choices"][0]["delta"].get("content") for chunk in chunks[1:3]] == [
        "Hello", "!"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 40, "completion_tokens": 15, "total_tokens": 55,
        "prompt_tokens_details": {"cached_tokens": 10, "cache_creation_tokens": 5}}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert {chunk["id"] for chunk in chunks} == {"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"}
    completion = translator.assemble(chunks)
    assert completion.choices[0].message.content == "Hello!"
    assert completion.usage is not None and completion.usage.total_tokens == 55


def test_a_tool_use_stream_numbers_tool_calls_from_zero() -> None:
    translator, chunks = _translate(_events("stream_tool_use.sse"))
    completion = translator.assemble(chunks)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Okay, let's check the weather for San Francisco, CA:"
    [call] = choice.message.tool_calls or []
    assert call.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert call.function is not None and call.function.name == "get_weather"
    assert json.loads(call.function.arguments or "") == {
        "location": "San Francisco, CA", "unit": "fahrenheit"}
    indexes = {part["index"] for chunk in chunks for choice in chunk["choices"]
               for part in choice["delta"].get("tool_calls", ())}
    assert indexes == {0}


def test_a_thinking_stream_keeps_the_whole_reasoning_and_its_signature() -> None:
    translator, chunks = _translate(_events("stream_thinking.sse"))
    pieces = [chunk["choices"][0]["delta"]["reasoning_content"] for chunk in chunks
              if chunk["choices"] and "reasoning_content" in chunk["choices"][0]["delta"]]
    assert len(pieces) == 2
    message = translator.assemble(chunks).choices[0].message
    extra = message.model_extra or {}
    reasoning = "I need to find the GCD of 1071 and 462.\n\n1071 = 2 * 462 + 147"
    assert extra["reasoning_content"] == reasoning
    assert extra["thinking_blocks"] == [{
        "type": "thinking", "thinking": reasoning,
        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}]
    assert message.content == "The greatest common divisor of 1071 and 462 is **21**."
    usage = Usage.model_validate(chunks[-1]["usage"])
    assert usage.reasoning_completion_tokens() == 80


def test_a_streamed_answer_tool_streams_as_content() -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_2", "model": "claude",
                                              "usage": {"input_tokens": 3, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": ANSWER_TOOL, "input": {}}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    translator, chunks = _translate(events)
    choice = translator.assemble(chunks).choices[0]
    assert choice.message.content == '{"city": "Paris"}'
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"


def test_a_streamed_stop_sequence_is_on_the_finishing_chunk_and_the_completion() -> None:
    events = _events("stream_text.sse")
    for event in events:
        if event["type"] == "message_delta":
            event["delta"] = {"stop_reason": "stop_sequence", "stop_sequence": "###"}
    translator, chunks = _translate(events)
    finishing = [choice for chunk in chunks for choice in chunk["choices"]
                 if choice["finish_reason"] is not None]
    assert [(choice["finish_reason"], choice["stop_sequence"]) for choice in finishing] == [
        ("stop", "###")]
    choice = translator.assemble(chunks).choices[0]
    assert (choice.finish_reason, (choice.model_extra or {})["stop_sequence"]) == (
        "stop", "###")


def test_an_error_event_breaks_the_stream_off_retriably() -> None:
    translator = AnthropicStreamTranslator("claude-1")
    translator.feed(_events("stream_text.sse")[0])
    with pytest.raises(ProviderRetriable, match="overloaded_error: Overloaded"):
        translator.feed({"type": "error",
                         "error": {"type": "overloaded_error", "message": "Overloaded"}})


def test_content_before_message_start_is_a_broken_stream() -> None:
    with pytest.raises(ProviderRetriable, match="before message_start"):
        AnthropicStreamTranslator("claude-1").feed(_events("stream_text.sse")[1])


def test_one_hour_cache_writes_are_kept_apart_for_their_price() -> None:
    usage = usage_from_anthropic({
        "input_tokens": 20, "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 300, "output_tokens": 7,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}})
    parsed = Usage.model_validate(usage)
    assert parsed.prompt_tokens == 420
    assert (parsed.cached_prompt_tokens(), parsed.cache_write_prompt_tokens(),
            parsed.cache_write_1h_prompt_tokens()) == (100, 300, 200)
