"""The Gemini translation, both ways, without a network: requests, answers, stream events."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from broker.config import DeploymentConfig
from broker.errors import UnsupportedParameter
from schemas import ChatCompletionRequest, EmbeddingRequest
from schemas.streaming import assemble_completion
from workers.providers.gemini_embeddings import from_gemini_embeddings, to_gemini_embeddings
from workers.providers.gemini_format import (
    GeminiStreamTranslator,
    from_gemini_response,
    to_gemini_request,
)
from workers.providers.gemini_schema import gemini_schema

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gemini"
DEPLOYMENT = DeploymentConfig(provider="gemini", model="gemini-2.5-flash")


def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((FIXTURES / name).read_bytes())
    return data


def _request(messages: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    body = ChatCompletionRequest.model_validate({
        "model": "chat", "messages": messages or [{"role": "user", "content": "Hi"}],
        **fields})
    return to_gemini_request(body, deployment=DEPLOYMENT)


def _translate(deployment: DeploymentConfig, **fields: Any) -> dict[str, Any]:
    body = ChatCompletionRequest.model_validate({
        "model": "chat", "messages": [{"role": "user", "content": "Hi"}], **fields})
    return to_gemini_request(body, deployment=deployment)


# --- requests ---------------------------------------------------------------------------


def test_a_conversation_becomes_contents_and_a_system_instruction() -> None:
    request = _request([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/cat.JPG?size=2",
                                                "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        ]},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "assistant", "content": "Un chat.", "name": "bot"},
    ])
    assert request == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
        "contents": [
            {"role": "user", "parts": [
                {"text": "What is in these?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
                {"fileData": {"fileUri": "https://x.test/cat.JPG?size=2",
                              "mimeType": "image/jpeg"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
            ]},
            {"role": "model", "parts": [{"text": "Un chat."}]},
        ],
    }


def test_tool_calls_and_their_results_become_function_parts() -> None:
    request = _request([
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
             "extra_content": {"google": {"thought_signature": "c2lnbg=="}}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        {"role": "user", "content": "Thanks"},
    ])
    assert request["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
             "thoughtSignature": "c2lnbg=="},
            {"functionCall": {"name": "get_time", "args": {}}},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
            {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
        ]},
        {"role": "user", "parts": [{"text": "Thanks"}]},
    ]


def test_tools_are_declared_within_geminis_schema_subset() -> None:
    request = _request(
        tools=[
            {"type": "function", "function": {
                "name": "get_weather", "description": "Weather now.", "strict": True,
                "parameters": {
                    "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                    "additionalProperties": False, "required": ["city"],
                    "properties": {"city": {"type": "string", "format": "hostname"},
                                   "unit": {"type": ["string", "null"],
                                            "enum": ["celsius", "fahrenheit"]}}}}},
            {"type": "function", "function": {
                "name": "now", "parameters": {"type": "object", "properties": {}}}},
        ],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert request["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather now.", "parameters": {
            "type": "object", "required": ["city"],
            "properties": {"city": {"type": "string"},
                           "unit": {"type": "string", "nullable": True,
                                    "enum": ["celsius", "fahrenheit"]}}}},
        {"name": "now"},
    ]}]
    assert request["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


@pytest.mark.parametrize(("choice", "mode"), [("auto", "AUTO"), ("none", "NONE"),
                                              ("required", "ANY")])
def test_tool_choice_modes(choice: str, mode: str) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert _request(tools=tools, tool_choice=choice)["toolConfig"] == {
        "functionCallingConfig": {"mode": mode}}


def test_sampling_parameters_become_the_generation_config() -> None:
    request = _request(temperature=0.2, top_p=0.9, top_k=40, seed=7, n=2, stop="END",
                       presence_penalty=0.5, frequency_penalty=-0.5, max_tokens=300,
                       logprobs=True, top_logprobs=3, reasoning_effort="low",
                       response_format={"type": "json_object"}, user="u1", store=False,
                       parallel_tool_calls=True, stream=True,
                       stream_options={"include_usage": True})
    assert request["generationConfig"] == {
        "temperature": 0.2, "topP": 0.9, "topK": 40, "seed": 7, "candidateCount": 2,
        "presencePenalty": 0.5, "frequencyPenalty": -0.5, "maxOutputTokens": 300,
        "stopSequences": ["END"], "responseMimeType": "application/json",
        "responseLogprobs": True, "logprobs": 3,
        "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True},
    }


def test_the_deployments_output_cap_applies_when_the_request_has_none() -> None:
    capped = DeploymentConfig(provider="gemini", model="m", max_output_tokens=512)
    assert _translate(capped)["generationConfig"] == {"maxOutputTokens": 512}
    assert _translate(capped, max_completion_tokens=20)["generationConfig"] == {
        "maxOutputTokens": 20}
    assert "generationConfig" not in _translate(DEPLOYMENT)


def test_a_json_schema_answer_keeps_its_whole_schema() -> None:
    schema = {"type": "object", "$defs": {"P": {"type": "string"}},
              "properties": {"p": {"$ref": "#/$defs/P"}}, "additionalProperties": False}
    request = _request(response_format={"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True, "schema": schema}})
    assert request["generationConfig"] == {"responseMimeType": "application/json",
                                           "responseJsonSchema": schema}


def test_no_reasoning_turns_thinking_off() -> None:
    assert _request(reasoning_effort="none")["generationConfig"] == {
        "thinkingConfig": {"thinkingBudget": 0, "includeThoughts": False}}


@pytest.mark.parametrize(("fields", "param"), [
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
     "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format"),
    ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0]"),
])
def test_what_gemini_cannot_express_is_refused_by_name(fields: dict[str, Any],
                                                       param: str) -> None:
    with pytest.raises(UnsupportedParameter) as refused:
        _request(**fields)
    assert refused.value.param == param


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "user", "content": [{"type": "image_url",
                                   "image_url": {"url": "https://x.test/image"}}]},
     "messages[0].content[0].image_url"),
    ({"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]},
     "messages[0].content[0]"),
    ({"role": "tool", "tool_call_id": "call_unknown", "content": "42"},
     "messages[0].tool_call_id"),
    ({"role": "system", "content": [{"type": "image_url",
                                     "image_url": {"url": "data:image/png;base64,AA"}}]},
     "messages[0].content[0]"),
])
def test_messages_gemini_cannot_express_are_refused_by_place(message: dict[str, Any],
                                                             param: str) -> None:
    with pytest.raises(UnsupportedParameter) as refused:
        _request([message])
    assert refused.value.param == param


def test_drop_params_lets_an_operator_accept_a_refused_parameter() -> None:
    lenient = DeploymentConfig(provider="gemini", model="m",
                               drop_params=["parallel_tool_calls", "logit_bias"])
    request = _translate(lenient, parallel_tool_calls=False, logit_bias={"1": 5})
    assert request == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def test_schema_references_are_inlined_and_recursion_refused() -> None:
    schema = {"type": "object", "definitions": {"Unit": {"type": "string", "const": "c"}},
              "properties": {"u": {"$ref": "#/definitions/Unit", "description": "unit"},
                             "n": {"oneOf": [{"type": "integer", "format": "int64"},
                                             {"type": "null"}]}}}
    assert gemini_schema(schema, param="p") == {"type": "object", "properties": {
        "u": {"type": "string", "enum": ["c"], "description": "unit"},
        "n": {"anyOf": [{"type": "integer", "format": "int64"}, {"type": "null"}]}}}
    recursive = {"$defs": {"Node": {"type": "object",
                                    "properties": {"next": {"$ref": "#/$defs/Node"}}}},
                 "$ref": "#/$defs/Node"}
    with pytest.raises(UnsupportedParameter) as refused:
        gemini_schema(recursive, param="tools[0].function.parameters")
    assert refused.value.param == "tools[0].function.parameters"


# --- answers ----------------------------------------------------------------------------


def test_an_answer_becomes_a_completion_with_reasoning_and_usage() -> None:
    completion = from_gemini_response(_fixture("text_answer.json"), model="configured")
    assert completion.id == "mD9xaK2vBMKd0-kP4qrX2Qo"
    assert completion.model == "gemini-2.5-flash"
    (choice,) = completion.choices
    assert choice.message.content == "Grey waves fold on stone, salt wind carries gull voices."
    assert choice.message.model_extra == {
        "reasoning_content": "The user wants a haiku about the sea."}
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (125, 44, 169)
    assert usage.cached_prompt_tokens() == 100
    assert usage.reasoning_completion_tokens() == 30


def test_function_calls_become_tool_calls_that_round_trip() -> None:
    completion = from_gemini_response(_fixture("function_call_answer.json"), model="m")
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(call.function.name, orjson.loads(call.function.arguments or ""))
            for call in calls if call.function] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"zone": "Europe/Paris"})]
    assert all((call.id or "").startswith("call_") for call in calls)
    assert len({call.id for call in calls}) == 2
    # The client sends the message back with its tool results: Gemini gets its calls,
    # thought signature included, and each result under the right function name.
    message = choice.message.model_dump(mode="json", exclude_none=True)
    request = _request([{"role": "user", "content": "Go"}, message,
                        {"role": "tool", "tool_call_id": calls[1].id, "content": "9:00"},
                        {"role": "tool", "tool_call_id": calls[0].id, "content": "[1]"}])
    assert request["contents"][1:] == [
        {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris",
                                                              "unit": "celsius"}},
             "thoughtSignature": "CiQB0e2Kb1kX9w=="},
            {"functionCall": {"name": "get_time", "args": {"zone": "Europe/Paris"}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_time", "response": {"content": "9:00"}}},
            {"functionResponse": {"name": "get_weather", "response": {"content": [1]}}}]},
    ]


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"), ("BLOCKLIST", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"), ("MALFORMED_FUNCTION_CALL", "stop"),
    ("OTHER", "stop"), ("SOMETHING_NEW", "stop"),
])
def test_finish_reasons(reason: str, finish: str) -> None:
    data = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason,
                            "safetyRatings": [{"category": "C", "probability": "HIGH"}]}]}
    (choice,) = from_gemini_response(data, model="m").choices
    assert choice.finish_reason == finish
    extra = choice.model_extra or {}
    assert extra.get("native_finish_reason") == (None if reason == "STOP" else reason)
    assert ("safety_ratings" in extra) == (finish == "content_filter")


def test_a_blocked_prompt_is_an_empty_filtered_answer_not_an_error() -> None:
    completion = from_gemini_response(_fixture("blocked_prompt.json"), model="m")
    (choice,) = completion.choices
    assert (choice.message.content, choice.finish_reason) == ("", "content_filter")
    assert (completion.model_extra or {})["prompt_feedback"]["blockReason"] == "SAFETY"
    assert completion.usage is not None and completion.usage.prompt_tokens == 9


def test_an_answer_without_candidates_or_reason_is_not_an_answer() -> None:
    with pytest.raises(ValueError, match="without candidates"):
        from_gemini_response({"usageMetadata": {"promptTokenCount": 3}}, model="m")


def test_logprobs_take_openais_shape() -> None:
    data = {"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": "STOP",
                            "logprobsResult": {
                                "chosenCandidates": [{"token": "Hi", "logProbability": -0.1}],
                                "topCandidates": [{"candidates": [
                                    {"token": "Hi", "logProbability": -0.1},
                                    {"token": "Yo", "logProbability": -2.5}]}]}}]}
    (choice,) = from_gemini_response(data, model="m").choices
    assert (choice.model_extra or {})["logprobs"] == {"refusal": None, "content": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -2.5, "bytes": [89, 111]}]}]}


# --- streams ----------------------------------------------------------------------------


def _events() -> list[dict[str, Any]]:
    lines = (FIXTURES / "text_stream.sse").read_text().splitlines()
    return [orjson.loads(line.removeprefix("data: ")) for line in lines if line.strip()]


def test_stream_events_become_openai_chunks_then_usage() -> None:
    translator = GeminiStreamTranslator(model="configured", created=1)
    chunks = [chunk for event in _events() for chunk in translator.translate(event)]
    assert translator.finished
    deltas = [(chunk["choices"][0]["delta"], chunk["choices"][0]["finish_reason"])
              for chunk in chunks]
    assert deltas == [
        ({"role": "assistant"}, None),
        ({"reasoning_content": "Weighing the tone first."}, None),
        ({"content": "Grey waves fold on stone,"}, None),
        ({"content": " salt wind carries gull voices."}, None),
        ({}, "stop"),
    ]
    assert {chunk["id"] for chunk in chunks} == {"stream-1"}
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    usage = translator.usage_chunk()
    assert usage is not None and usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 11, "completion_tokens": 19,
                              "total_tokens": 30,
                              "completion_tokens_details": {"reasoning_tokens": 5}}
    completion = translator.completion([*chunks, usage])
    assert completion.choices[0].message.content == (
        "Grey waves fold on stone, salt wind carries gull voices.")
    assert (completion.choices[0].message.model_extra or {})["reasoning_content"] == (
        "Weighing the tone first.")
    assert completion.usage is not None and completion.usage.completion_tokens == 19


def test_streamed_tool_calls_arrive_whole_and_assemble_like_the_whole_answer() -> None:
    answer = _fixture("function_call_answer.json")
    translator = GeminiStreamTranslator(model="m")
    chunks = translator.translate(answer)
    calls = [chunk["choices"][0]["delta"]["tool_calls"][0] for chunk in chunks
             if "tool_calls" in chunk["choices"][0]["delta"]]
    assert [(call["index"], call["function"]["name"]) for call in calls] == [
        (0, "get_weather"), (1, "get_time")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    streamed = translator.completion(chunks).choices[0]
    whole = from_gemini_response(answer, model="m").choices[0]
    assert streamed.finish_reason == whole.finish_reason
    assert [call.model_dump(exclude={"id"}) for call in streamed.message.tool_calls or []] == [
        call.model_dump(exclude={"id"}) for call in whole.message.tool_calls or []]
    # Plain chunk merging sees the same calls (the signature rides only on the whole call).
    merged = assemble_completion(chunks).choices[0].message.tool_calls or []
    assert [call.function.name for call in merged if call.function] == [
        "get_weather", "get_time"]


def test_a_stream_without_a_finish_reason_is_unfinished() -> None:
    translator = GeminiStreamTranslator(model="m")
    translator.translate(_events()[0])
    assert not translator.finished
    assert not GeminiStreamTranslator(model="m").finished


def test_a_blocked_prompt_streams_as_one_filtered_chunk() -> None:
    translator = GeminiStreamTranslator(model="m")
    (chunk,) = translator.translate(_fixture("blocked_prompt.json"))
    assert chunk["choices"][0]["finish_reason"] == "content_filter"
    assert translator.finished
    completion = translator.completion([chunk])
    assert completion.choices[0].message.content == ""
    assert (completion.model_extra or {})["prompt_feedback"]["blockReason"] == "SAFETY"


# --- embeddings -------------------------------------------------------------------------


def test_embeddings_go_as_one_batch_and_come_back_in_order() -> None:
    body = EmbeddingRequest.model_validate({"model": "e", "input": ["a", "b"],
                                            "dimensions": 2, "encoding_format": "base64"})
    assert to_gemini_embeddings(body, model_path="models/text-embedding-004") == {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]},
             "outputDimensionality": 2},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]},
             "outputDimensionality": 2}]}
    answer = from_gemini_embeddings(
        {"embeddings": [{"values": [0.5, -1.0]}, {"values": [0.25, 2.0]}]},
        body=body, model="text-embedding-004", estimated_tokens=2)
    vectors = [struct.unpack("<2f", base64.b64decode(str(item.embedding)))
               for item in answer.data]
    assert vectors == [(0.5, -1.0), (0.25, 2.0)]
    assert answer.usage is not None and answer.usage.prompt_tokens == 2


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": [[1, 2, 3]]}, "input"), ({"input": "a", "encoding_format": "int8"},
                                         "encoding_format"),
    ({"input": "a", "truncate": "END"}, "truncate"),
])
def test_embedding_parameters_gemini_cannot_express_are_refused(fields: dict[str, Any],
                                                                param: str) -> None:
    body = EmbeddingRequest.model_validate({"model": "e", **fields})
    with pytest.raises(UnsupportedParameter) as refused:
        to_gemini_embeddings(body, model_path="models/e")
    assert refused.value.param == param
