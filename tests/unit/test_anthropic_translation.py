"""The Anthropic door's pure translations: Messages bodies to our requests, our answers and
chunks to Anthropic's messages and events, batches and their results, error envelopes.

Request and answer fixtures follow Anthropic's documented examples (Messages API, tool use,
extended thinking, Message Batches), written small by hand.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import Message

from broker.batches.lines import output_line, parse_line
from broker.errors import InvalidRequest, LimitExceeded, UnknownModel
from ingress.anthropic.batch_objects import (
    NewMessageBatch,
    batch_id,
    input_file,
    message_batch,
    message_batch_id,
    result_line,
    unanswered_line,
)
from ingress.anthropic.errors import result_failure, sluice_error_response
from ingress.anthropic.params import MessagesRequest
from ingress.anthropic.request import to_chat_request
from ingress.anthropic.response import to_message
from ingress.anthropic.stream import MessageStream
from ingress.body import validate_body
from schemas import ChatCompletion, InferenceResult, RequestStatus
from schemas.anthropic import FINISH_TO_STOP_REASON, STOP_REASON_TO_FINISH
from schemas.messages import ErrorInfo
from schemas.streaming import stream_chunks

WEATHER = {"name": "get_weather", "description": "Get the current weather",
           "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]},
           "cache_control": {"type": "ephemeral"}}
PNG = "iVBORw0KGgo="


def _chat(body: dict[str, Any], native: bool = False) -> dict[str, Any]:
    request = validate_body(MessagesRequest, body)
    return to_chat_request(request, native=native).model_dump(mode="json", exclude_none=True)


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hello, Claude"}], **fields}


def _completion(message: dict[str, Any], finish: str = "stop", **choice: Any) -> ChatCompletion:
    return ChatCompletion.model_validate({
        "id": "chatcmpl-1", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", **message},
                     "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                  "prompt_tokens_details": {"cached_tokens": 30,
                                            "cache_creation_tokens": 50}}})


# --- requests --------------------------------------------------------------------------


def test_a_plain_request_keeps_its_parameters() -> None:
    chat = _chat(_body(system="You are a pirate.", stop_sequences=["\n\nHuman:"],
                       temperature=0.5, top_p=0.9, metadata={"user_id": "u-42"}))
    assert chat == {
        "model": "claude-sonnet-4-5", "max_tokens": 1024, "temperature": 0.5, "top_p": 0.9,
        "stop": ["\n\nHuman:"], "user": "u-42",
        "messages": [{"role": "system", "content": "You are a pirate."},
                     {"role": "user", "content": "Hello, Claude"}]}


def test_blocks_become_parts_and_cache_control_travels_only_to_anthropic() -> None:
    body = _body(system=[{"type": "text", "text": "Long document.",
                          "cache_control": {"type": "ephemeral"}}],
                 messages=[{"role": "user", "content": [
                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                  "data": PNG}},
                     {"type": "image", "source": {"type": "url",
                                                  "url": "https://example.com/a.jpg"}},
                     {"type": "document", "title": "r.pdf", "source": {
                         "type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
                     {"type": "text", "text": "Compare.",
                      "cache_control": {"type": "ephemeral"}}]}])
    native = _chat(body, native=True)
    assert native["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": "Long document.", "cache_control": {"type": "ephemeral"}}]}
    assert native["messages"][1]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "file", "file": {"filename": "r.pdf",
                                  "file_data": "data:application/pdf;base64,JVBE"}},
        {"type": "text", "text": "Compare.", "cache_control": {"type": "ephemeral"}}]
    portable = _chat(body)
    assert "cache_control" not in orjson.dumps(portable).decode()


def test_tool_use_and_results_become_tool_calls_and_tool_messages() -> None:
    body = _body(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in SF?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
             "input": {"location": "San Francisco, CA"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "is_error": True,
             "content": [{"type": "text", "text": "Service down"},
                         {"type": "image", "source": {"type": "base64",
                                                      "media_type": "image/png", "data": PNG}}]},
            {"type": "text", "text": "Try again?"}]}])
    native = _chat(body, native=True)
    assistant, tool, user = native["messages"][1:]
    assert assistant == {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "toolu_01", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"location":"San Francisco, CA"}'}}]}
    assert tool == {"role": "tool", "tool_call_id": "toolu_01", "is_error": True,
                    "content": [{"type": "text", "text": "Service down"}]}
    # OpenAI's tool messages carry text only: the result's image follows for the user.
    assert user == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "Try again?"}]}
    assert native["tools"] == [{"type": "function", "cache_control": {"type": "ephemeral"},
                                "function": {"name": "get_weather",
                                             "description": "Get the current weather",
                                             "parameters": WEATHER["input_schema"]}}]
    portable = _chat(body)
    assert "is_error" not in portable["messages"][2]
    assert "cache_control" not in portable["tools"][0]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any", "disable_parallel_tool_use": True},
     {"tool_choice": "required", "parallel_tool_calls": False}),
    ({"type": "tool", "name": "get_weather"},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ({"type": "none"}, {"tool_choice": "none"}),
])
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = _chat(_body(tools=[WEATHER], tool_choice=choice))
    assert {key: chat[key] for key in expected} == expected
    assert ("parallel_tool_calls" in chat) == ("parallel_tool_calls" in expected)


def test_anthropic_only_parameters_travel_to_anthropic_or_the_openai_way() -> None:
    body = _body(thinking={"type": "enabled", "budget_tokens": 10000}, top_k=5,
                 service_tier="auto", output_config={"format": {
                     "type": "json_schema", "schema": {"type": "object"}}},
                 some_new_parameter={"x": 1})
    native = _chat(body, native=True)
    assert native["thinking"] == {"type": "enabled", "budget_tokens": 10000}
    assert native["top_k"] == 5 and native["service_tier"] == "auto"
    assert native["some_new_parameter"] == {"x": 1} and "reasoning_effort" not in native
    portable = _chat(body)
    assert portable["reasoning_effort"] == "high"  # 10000 is nearer 16384 than 4096
    assert portable["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": {"type": "object"}, "strict": True}}
    assert not {"thinking", "top_k", "service_tier", "output_config"} & set(portable)
    assert portable["some_new_parameter"] == {"x": 1}  # the provider may know it


@pytest.mark.parametrize(("budget", "effort"), [
    (1024, "low"), (2047, "low"), (2048, "medium"), (4096, "medium"), (8191, "medium"),
    (8192, "high"), (16384, "high"), (64000, "high")])
def test_a_thinking_budget_is_the_nearest_effort_for_other_providers(budget: int,
                                                                      effort: str) -> None:
    chat = _chat(_body(max_tokens=70000, thinking={"type": "enabled", "budget_tokens": budget}))
    assert chat["reasoning_effort"] == effort


def test_cache_control_of_a_tool_call_and_a_tool_result_travels_only_to_anthropic() -> None:
    cached = {"type": "ephemeral"}
    body = _body(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                           "name": "get_weather", "input": {},
                                           "cache_control": cached}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "18C", "cache_control": cached}]}])
    native = _chat(body, native=True)["messages"]
    assert native[1]["tool_calls"][0]["cache_control"] == cached
    assert native[2]["cache_control"] == cached
    assert "cache_control" not in orjson.dumps(_chat(body)).decode()


def test_earlier_thinking_blocks_go_back_to_anthropic_only() -> None:
    thinking = {"type": "thinking", "thinking": "Let me see.", "signature": "sig=="}
    body = _body(messages=[{"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": [thinking,
                                                             {"type": "text", "text": "Hey"}]},
                           {"role": "user", "content": "More"}])
    assert _chat(body, native=True)["messages"][1]["thinking_blocks"] == [thinking]
    assert _chat(body)["messages"][1] == {"role": "assistant", "content": "Hey"}


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens"),
    (_body(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]),
     "messages[0].content[0]"),
    (_body(messages=[{"role": "system", "content": "Hi"}]), "messages[0].role"),
    (_body(max_tokens="10"), "max_tokens"),
    (_body(tool_choice={"type": "tool"}), "tool_choice.name"),
    (_body(thinking={"type": "enabled", "budget_tokens": 10}), "thinking.budget_tokens"),
    (_body(messages=[{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]),
     "messages[0].content[0].type"),
])
def test_mistakes_name_the_anthropic_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _chat(body)
    assert refused.value.param is not None and refused.value.param.startswith(param)


# --- answers ---------------------------------------------------------------------------


def test_an_answer_becomes_a_message_the_sdk_reads() -> None:
    completion = _completion({"content": "Sunny.", "reasoning_content": "Check weather.",
                              "tool_calls": [{"id": "call_1", "type": "function", "function": {
                                  "name": "get_weather",
                                  "arguments": '{"location": "SF"}'}}]}, finish="tool_calls")
    message = Message.model_validate(to_message(completion, "req_abc", None))
    assert message.id == "msg_abc" and message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"location": "SF"}  # type: ignore[union-attr]
    # OpenAI counts cache reads and writes inside prompt_tokens; Anthropic apart.
    assert message.usage.input_tokens == 20
    assert message.usage.cache_read_input_tokens == 30
    assert message.usage.cache_creation_input_tokens == 50
    assert message.usage.output_tokens == 20


@pytest.mark.parametrize(("finish", "choice", "stop", "reason", "sequence"), [
    ("stop", {}, ["END"], "end_turn", None),
    ("stop", {"stop_sequence": "END"}, ["END"], "stop_sequence", "END"),
    ("stop", {"stop_reason": "END"}, ["END"], "stop_sequence", "END"),  # vLLM's field
    ("stop", {"stop_reason": "OTHER"}, ["END"], "end_turn", None),
    ("length", {}, None, "max_tokens", None),
    ("content_filter", {}, None, "refusal", None),
])
def test_stop_reasons(finish: str, choice: dict[str, Any], stop: list[str] | None,
                      reason: str, sequence: str | None) -> None:
    message = to_message(_completion({"content": "x"}, finish=finish, **choice), "req_1", stop)
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_the_stop_reason_tables_are_each_others_inverse() -> None:
    for reason in ("end_turn", "max_tokens", "tool_use", "refusal"):
        assert FINISH_TO_STOP_REASON[STOP_REASON_TO_FINISH[reason]] == reason


def test_a_message_sent_back_as_the_next_turn_is_the_same_tool_call() -> None:
    call = {"id": "call_9", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}
    completion = _completion({"content": None, "tool_calls": [call]}, finish="tool_calls")
    message = Message.model_validate(to_message(completion, "req_1", None))
    body = _body(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather?"},
        message.to_param(),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_9",
                                      "content": "18C"}]}])
    chat = _chat(orjson.loads(orjson.dumps(body, default=dict)))
    assert chat["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "call_9", "content": "18C"}


# --- streams ---------------------------------------------------------------------------


def _events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in data.decode().split("\n\n"):
        if block:
            name, payload = block.split("\n")
            events.append((name.removeprefix("event: "), orjson.loads(payload[6:])))
    return events


def test_chunks_become_named_events_that_add_up_to_the_message() -> None:
    completion = _completion({"content": "It is sunny today", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"location": "San Francisco"}'}}]},
        finish="tool_calls")
    stream = MessageStream("req_7", "gpt-4o-mini", None, input_tokens=99)
    chunks = stream_chunks(completion, include_usage=True)
    chunks.insert(1, {"choices": [{"index": 0, "delta": {"reasoning_content": "Hmm."}}]})
    data = stream.start() + b"".join(stream.feed(chunk) for chunk in chunks)
    events = _events(data + stream.finish(None))
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert events[0][1]["message"]["id"] == "msg_7"
    assert events[0][1]["message"]["usage"]["input_tokens"] == 99
    starts = [data["content_block"]["type"] for name, data in events
              if name == "content_block_start"]
    assert starts == ["thinking", "tool_use", "text"]
    assert names.count("content_block_stop") == 3
    deltas: dict[int, str] = {}
    for name, event in events:
        if name == "content_block_delta":
            delta = event["delta"]
            piece = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
            deltas[event["index"]] = deltas.get(event["index"], "") + piece
    assert deltas == {0: "Hmm.", 1: '{"location": "San Francisco"}', 2: "It is sunny today"}
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"] == {"input_tokens": 20, "output_tokens": 20,
                              "cache_read_input_tokens": 30, "cache_creation_input_tokens": 50}


def _blocks_of(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The content blocks `events` build, as a client adds them up."""
    blocks: list[dict[str, Any]] = []
    for name, event in events:
        if name == "content_block_start":
            blocks.append(dict(event["content_block"]))
        elif name == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] in ("thinking_delta", "text_delta"):
                field = delta["type"].removesuffix("_delta")
                block[field] += delta[field]
    return blocks


def test_streamed_thinking_blocks_send_their_signature_and_redacted_thinking() -> None:
    signed = {"type": "thinking", "thinking": "Hmm. Yes.", "signature": "sig1=="}
    redacted = {"type": "redacted_thinking", "data": "EmwKAhgB=="}
    unstreamed = {"type": "thinking", "thinking": "Later.", "signature": "sig2=="}
    stream = MessageStream("req_1", "claude", None, 0)
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"reasoning_content": "Hmm."}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": " Yes."}}]},
        {"choices": [{"index": 0, "delta": {"thinking_blocks": [signed]}}]},
        {"choices": [{"index": 0, "delta": {"thinking_blocks": [redacted]}}]},
        {"choices": [{"index": 0, "delta": {"thinking_blocks": [unstreamed]}}]},
        {"choices": [{"index": 0, "delta": {"content": "Done."}}]}]
    events = _events(stream.start() + b"".join(stream.feed(chunk) for chunk in chunks)
                     + stream.finish(None))
    assert _blocks_of(events) == [signed, redacted, unstreamed,
                                  {"type": "text", "text": "Done."}]
    names = [name for name, _ in events]
    assert names.count("content_block_start") == names.count("content_block_stop") == 4
    # The redacted block starts whole and stops at once, as Anthropic streams it.
    start = names.index("content_block_start", names.index("content_block_start") + 1)
    assert names[start + 1] == "content_block_stop"


def test_a_usage_only_chunk_makes_no_event() -> None:
    stream = MessageStream("req_1", "m", None, 0)
    assert stream.feed({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                                 "total_tokens": 6}}) == b""
    assert _events(stream.finish(None))[0][1]["usage"]["input_tokens"] == 5


# --- batches ---------------------------------------------------------------------------


def test_a_batch_becomes_an_input_file_the_batch_machinery_accepts() -> None:
    batch = NewMessageBatch.model_validate({"requests": [
        {"custom_id": "a", "params": _body()},
        {"custom_id": "b", "params": _body(system="Be brief.")}]})
    content = input_file(batch, lambda params: to_chat_request(params, native=False))
    lines = [parse_line(number, raw, "/v1/chat/completions", frozenset({"claude-sonnet-4-5"}))
             for number, raw in enumerate(content.splitlines(), 1)]
    assert [line.custom_id for line in lines] == ["a", "b"]  # type: ignore[union-attr]
    assert all(line.body is not None for line in lines)
    twice = NewMessageBatch.model_validate({"requests": [
        {"custom_id": "a", "params": _body()}, {"custom_id": "a", "params": _body()}]})
    with pytest.raises(InvalidRequest) as refused:
        input_file(twice, lambda params: to_chat_request(params, native=False))
    assert refused.value.param == "requests[1].custom_id"


def _batch(status: str, total: int, completed: int, failed: int, **times: int) -> dict[str, Any]:
    return {"id": "batch_ab12", "status": status, "created_at": 1_700_000_000,
            "expires_at": 1_700_086_400, "metadata": {"anthropic_requests": "4"},
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            **times}


@pytest.mark.parametrize(("batch", "state", "counts"), [
    (_batch("validating", 0, 0, 0), "in_progress", (4, 0, 0, 0, 0)),
    (_batch("in_progress", 4, 1, 1), "in_progress", (2, 1, 1, 0, 0)),
    (_batch("cancelling", 4, 1, 0, cancelling_at=1_700_000_100), "canceling", (3, 1, 0, 0, 0)),
    (_batch("cancelled", 4, 1, 0, cancelled_at=1_700_000_200), "ended", (0, 1, 0, 3, 0)),
    (_batch("expired", 4, 2, 1, expired_at=1_700_086_400), "ended", (0, 2, 1, 0, 1)),
    (_batch("completed", 4, 3, 1, completed_at=1_700_000_300), "ended", (0, 3, 1, 0, 0)),
    (_batch("failed", 4, 0, 0, failed_at=1_700_000_001), "ended", (0, 0, 4, 0, 0)),
])
def test_batch_objects(batch: dict[str, Any], state: str,
                       counts: tuple[int, ...]) -> None:
    shown = message_batch(batch, lambda public: f"http://x/v1/messages/batches/{public}/results")
    assert shown["id"] == "msgbatch_ab12" and shown["processing_status"] == state
    assert tuple(shown["request_counts"][key] for key in (
        "processing", "succeeded", "errored", "canceled", "expired")) == counts
    assert shown["created_at"] == "2023-11-14T22:13:20Z"
    assert (shown["results_url"] is not None) == (state == "ended")
    assert (shown["ended_at"] is not None) == (state == "ended")
    assert batch_id(shown["id"]) == "batch_ab12" == batch_id("batch_ab12")
    assert message_batch_id("batch_ab12") == shown["id"]


def test_result_lines() -> None:
    body = {**_completion({"content": "Hi"}).model_dump(mode="json"), "id": "batch_req_1"}
    succeeded = orjson.loads(result_line(orjson.loads(
        output_line("batch_req_1", "a", "succeeded", 200, body))))
    assert succeeded["custom_id"] == "a" and succeeded["result"]["type"] == "succeeded"
    assert Message.model_validate(succeeded["result"]["message"]).content[0].text == "Hi"  # type: ignore[union-attr]
    error = {"error": {"message": "The model 'x' does not exist.", "type": "invalid_request_error",
                       "param": None, "code": None}}
    errored = orjson.loads(result_line(orjson.loads(
        output_line("batch_req_2", "b", "failed", 400, error))))
    assert errored["result"] == {"type": "errored", "error": {"type": "error", "error": {
        "type": "invalid_request_error", "message": "The model 'x' does not exist."}}}
    for status, shown in (("cancelled", "canceled"), ("expired", "expired")):
        line = orjson.loads(result_line(orjson.loads(
            output_line("batch_req_3", "c", status, None, None))))
        assert line["result"] == {"type": shown}


def test_requests_that_never_got_a_line() -> None:
    cancelled = orjson.loads(unanswered_line(_batch("cancelled", 0, 0, 0), "a", 1))
    assert cancelled == {"custom_id": "a", "result": {"type": "canceled"}}
    expired = orjson.loads(unanswered_line(_batch("expired", 0, 0, 0), "b", 2))
    assert expired["result"] == {"type": "expired"}
    refused = {**_batch("failed", 0, 0, 0), "errors": {"object": "list", "data": [
        {"code": "invalid_request", "line": 2, "message": "Bad model.", "param": "body"}]}}
    assert orjson.loads(unanswered_line(refused, "c", 2))["result"]["error"] == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "Bad model."}}


# --- errors ----------------------------------------------------------------------------


def test_errors_keep_their_status_in_anthropics_envelope() -> None:
    unknown = sluice_error_response(UnknownModel("nope"))
    assert unknown.status_code == 404
    assert orjson.loads(unknown.body)["error"]["type"] == "not_found_error"
    limited = sluice_error_response(LimitExceeded("slow down", code="rate_limit_exceeded",
                                                  retry_after_s=2.5))
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert orjson.loads(limited.body) == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "slow down"}}
    result = InferenceResult.model_validate({
        "request_id": "req_1", "status": RequestStatus.FAILED, "tenant": "t",
        "model": "m", "created_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:00:00Z",
        "error": ErrorInfo(type="upstream_error", message="provider down").model_dump()})
    assert result_failure(result) == (502, {"type": "error", "request_id": "req_1", "error": {
        "type": "api_error", "message": "provider down"}})
