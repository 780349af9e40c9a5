"""The Anthropic translation: unified requests as Messages API bodies."""

from __future__ import annotations

from typing import Any

import pytest

from broker.errors import UnsupportedParameter
from schemas import ChatCompletionRequest
from workers.providers.anthropic_format import ANSWER_TOOL, to_anthropic_request

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]}}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def _request(messages: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    drop = fields.pop("drop_params", ())
    body = ChatCompletionRequest.model_validate({
        "model": "logical", "messages": messages or [{"role": "user", "content": "Hi"}],
        **fields})
    return to_anthropic_request(body, model="claude-sonnet-4-20250514",
                                default_max_tokens=4096, deployment="claude-1",
                                drop_params=drop)


def _refused(messages: list[dict[str, Any]] | None = None, **fields: Any) -> str:
    with pytest.raises(UnsupportedParameter) as caught:
        _request(messages, **fields)
    assert caught.value.status_code == 400
    assert caught.value.deployment == "claude-1"
    return caught.value.param


# --- requests: the conversation --------------------------------------------------------


def test_system_and_developer_messages_become_the_top_level_system() -> None:
    request = _request([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
    ])
    assert request["system"] == "You are terse.\n\nAnswer in French."
    assert request["messages"] == [{"role": "user", "content": "Hi"}]
    assert request["model"] == "claude-sonnet-4-20250514"


def test_a_cached_system_part_keeps_its_blocks() -> None:
    cached = {"type": "text", "text": "Long manual", "cache_control": {"type": "ephemeral"}}
    request = _request([{"role": "system", "content": "Rules."},
                        {"role": "system", "content": [cached]},
                        {"role": "user", "content": "Hi"}])
    assert request["system"] == [{"type": "text", "text": "Rules."}, cached]


def test_images_become_base64_or_url_sources_and_cache_control_stays() -> None:
    request = _request([{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}",
                                            "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"},
         "cache_control": {"type": "ephemeral"}},
    ]}])
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"},
         "cache_control": {"type": "ephemeral"}},
    ]


def test_a_pdf_file_part_becomes_a_document() -> None:
    request = _request([{"role": "user", "content": [{"type": "file", "file": {
        "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}]}])
    assert request["messages"][0]["content"] == [{"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}]


@pytest.mark.parametrize("part", [
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "file", "file": {"file_id": "file-abc"}},
    {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.jpg"}},
])
def test_parts_anthropic_cannot_take_are_refused(part: dict[str, Any]) -> None:
    assert _refused([{"role": "user", "content": [part]}]) == "messages"


def test_consecutive_messages_of_one_role_merge_so_turns_alternate() -> None:
    request = _request([
        {"role": "user", "content": "First"},
        {"role": "user", "content": [{"type": "text", "text": "Second"}]},
        {"role": "assistant", "content": "Reply"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Third"},
    ])
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "First"},
                                     {"type": "text", "text": "Second"}]},
        {"role": "assistant", "content": "Reply"},
        {"role": "user", "content": "Third"},
    ]


def test_tool_calls_and_results_become_tool_use_and_one_user_turn_of_results() -> None:
    request = _request([
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2",
         "content": [{"type": "text", "text": "21C"}]},
        {"role": "user", "content": "Which is warmer?"},
    ], tools=[WEATHER_TOOL])
    assert request["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"location": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather",
             "input": {"location": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "21C"},
            {"type": "text", "text": "Which is warmer?"}]},
    ]


def test_thinking_blocks_of_an_earlier_answer_go_back_first() -> None:
    block = {"type": "thinking", "thinking": "Check the weather.", "signature": "sig=="}
    request = _request([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "thinking_blocks": [block],
         "reasoning_content": "Check the weather.",
         "tool_calls": [{"id": "toolu_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
    ])
    assert request["messages"][1]["content"] == [
        block, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]


def test_cache_control_of_tool_calls_and_tool_messages_stays_on_their_blocks() -> None:
    cached = {"type": "ephemeral"}
    request = _request([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "cache_control": cached,
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C", "is_error": False,
         "cache_control": cached},
    ])
    assert request["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                           "name": "get_weather", "input": {},
                                           "cache_control": cached}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "18C", "is_error": False,
                                      "cache_control": cached}]}]


def test_tool_call_arguments_that_are_not_a_json_object_are_refused() -> None:
    assert _refused([{"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function",
         "function": {"name": "f", "arguments": "[1, 2]"}}]}]) == "messages"


def test_participant_names_are_refused_unless_the_deployment_drops_them() -> None:
    named = [{"role": "user", "name": "alice", "content": "Hi"}]
    assert _refused(named) == "name"
    assert _request(named, drop_params=["name"])["messages"] == [
        {"role": "user", "content": "Hi"}]


# --- requests: parameters --------------------------------------------------------------


def test_max_tokens_is_the_requests_limit_else_the_default() -> None:
    assert _request()["max_tokens"] == 4096
    assert _request(max_tokens=100)["max_tokens"] == 100
    assert _request(max_completion_tokens=50, max_tokens=100)["max_tokens"] == 50


def test_sampling_parameters_and_stop_sequences() -> None:
    request = _request(temperature=0.2, top_p=0.9, top_k=40, stop="END")
    assert (request["temperature"], request["top_p"], request["top_k"]) == (0.2, 0.9, 40)
    assert request["stop_sequences"] == ["END"]
    assert _request(stop=["a", "b"])["stop_sequences"] == ["a", "b"]


def test_a_temperature_above_anthropics_range_is_refused() -> None:
    assert _refused(temperature=1.5) == "temperature"


def test_tools_become_input_schemas_with_their_cache_control() -> None:
    cached = {**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}}
    request = _request(tools=[cached, {"type": "function", "function": {"name": "now"}}])
    assert request["tools"] == [
        {"name": "get_weather", "description": "Current weather in a city",
         "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
         "cache_control": {"type": "ephemeral"}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in request


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"}),
])
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    assert _request(tools=[WEATHER_TOOL], tool_choice=choice)["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    assert _request(tools=[WEATHER_TOOL], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}
    assert _request(tools=[WEATHER_TOOL], tool_choice="required",
                    parallel_tool_calls=False)["tool_choice"] == {
        "type": "any", "disable_parallel_tool_use": True}


def test_a_json_schema_response_format_is_a_forced_answer_tool() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = _request(response_format={"type": "json_schema", "json_schema": {
        "name": "place", "schema": schema, "strict": True}})
    assert request["tools"] == [{"name": ANSWER_TOOL, "description": request["tools"][0][
        "description"], "input_schema": schema}]
    assert request["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}


def test_beside_the_clients_tools_answering_is_one_more_tool_to_call() -> None:
    request = _request(tools=[WEATHER_TOOL], response_format={"type": "json_object"})
    assert [tool["name"] for tool in request["tools"]] == ["get_weather", ANSWER_TOOL]
    assert request["tools"][1]["input_schema"] == {"type": "object"}
    assert request["tool_choice"] == {"type": "any"}
    required = _request(tools=[WEATHER_TOOL], tool_choice="required",
                        response_format={"type": "json_object"})
    assert [tool["name"] for tool in required["tools"]] == ["get_weather"]


def test_reasoning_effort_becomes_a_thinking_budget_within_max_tokens() -> None:
    request = _request(reasoning_effort="medium", max_completion_tokens=1000)
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert request["max_tokens"] == 5096
    assert _request(reasoning_effort="high")["max_tokens"] == 4096 + 16384
    assert _request(reasoning_effort="minimal")["thinking"]["budget_tokens"] == 1024
    assert _request(reasoning_effort="low", max_tokens=8000)["max_tokens"] == 8000
    assert "thinking" not in _request(reasoning_effort="none")


@pytest.mark.parametrize(("fields", "param"), [
    ({"temperature": 0.5}, "temperature"),
    ({"top_k": 5}, "top_k"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [WEATHER_TOOL], "tool_choice": "required"}, "tool_choice"),
])
def test_what_anthropic_refuses_beside_thinking_is_refused(fields: dict[str, Any],
                                                          param: str) -> None:
    assert _refused(reasoning_effort="low", **fields) == param


def test_anthropic_thinking_is_passed_through_and_wins() -> None:
    thinking = {"type": "enabled", "budget_tokens": 3000}
    request = _request(thinking=thinking, reasoning_effort="high")
    assert request["thinking"] == thinking


def test_the_user_becomes_metadata_user_id() -> None:
    assert _request(user="u-42")["metadata"] == {"user_id": "u-42"}
    assert _request(metadata={"user_id": "m-1"}, user="u-42")["metadata"] == {"user_id": "m-1"}
    assert _refused(metadata={"purpose": "eval"}) == "metadata"


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"store": True}, "store"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"verbosity": "low"}, "verbosity"),
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"response_format": {"type": "grammar"}}, "response_format"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
])
def test_parameters_without_an_anthropic_equivalent_are_refused_by_name(
    fields: dict[str, Any], param: str
) -> None:
    assert _refused(**fields) == param


def test_neutral_values_and_harmless_hints_are_left_out() -> None:
    request = _request(n=1, logprobs=False, presence_penalty=0, frequency_penalty=0.0,
                       seed=7, store=False, service_tier="auto", prompt_cache_key="k",
                       stream=True, stream_options={"include_usage": True}, temperature=None)
    assert set(request) == {"model", "messages", "max_tokens"}


def test_drop_params_accepts_what_would_be_refused() -> None:
    assert "n" not in _request(n=3, logit_bias={"1": 2}, drop_params=["n", "logit_bias"])
