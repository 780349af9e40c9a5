"""Anthropic → our form → Anthropic: a client of our Anthropic door whose model is served
by Anthropic must see what Anthropic said and Anthropic must get what the client sent.

The door (`ingress.anthropic`) and the adapter (`workers.providers.anthropic_*`) translate
in opposite directions; here one's output is the other's input, with a JSON round trip
between them where Kafka carries it. Streams are read back with the official SDK, as a
client would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.types import Message

from ingress.anthropic.params import MessagesRequest
from ingress.anthropic.request import to_chat_request
from ingress.anthropic.response import to_message
from ingress.anthropic.stream import MessageStream
from ingress.body import validate_body
from schemas import ChatCompletion, ChatCompletionRequest
from schemas.anthropic import EFFORT_LADDER
from workers.providers.anthropic_format import (
    AnthropicStreamTranslator,
    from_anthropic_message,
    to_anthropic_request,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
UPSTREAM = "claude-sonnet-4-20250514"
CACHED = {"type": "ephemeral"}
THINKING = {"type": "thinking", "thinking": "They want Paris.", "signature": "EqQBCgIYAhIM=="}


def _sdk_message(sse: bytes) -> Message:
    """The message Anthropic's SDK assembles from the stream `sse`."""
    transport = httpx2.MockTransport(lambda request: httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content=sse))
    with anthropic.Anthropic(api_key="sk-ant-test", max_retries=0,
                             http_client=httpx2.Client(transport=transport)) as client, \
            client.messages.stream(model=UPSTREAM, max_tokens=1024, messages=[
                {"role": "user", "content": "Hi"}]) as stream:
        return stream.get_final_message()


def _door_stream(events: list[dict[str, Any]],
                 stop_sequences: list[str] | None = None) -> tuple[bytes, ChatCompletion]:
    """Anthropic's `events` through the adapter, over "Kafka", out of the door; and the
    completion the worker assembles from the same chunks."""
    translator = AnthropicStreamTranslator("claude-1", created=1)
    chunks = [orjson.loads(orjson.dumps(chunk))
              for event in events for chunk in translator.feed(event)]
    door = MessageStream("req_1", UPSTREAM, stop_sequences, input_tokens=0)
    sse = door.start() + b"".join(door.feed(chunk) for chunk in chunks) + door.finish(None)
    return sse, translator.assemble(chunks)


def _events(sse: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in sse.splitlines() if line.startswith("data:")]


def _content(message: Message) -> list[dict[str, Any]]:
    return [block.model_dump(exclude_none=True) for block in message.content]


# --- answers, streamed -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["stream_thinking_tool_use.sse", "stream_thinking.sse",
                                  "stream_tool_use.sse", "stream_text.sse"])
def test_a_streamed_answer_reaches_the_client_as_anthropic_sent_it(name: str) -> None:
    original = (FIXTURES / name).read_text()
    sse, _ = _door_stream(_events(original))
    sent, received = _sdk_message(original.encode()), _sdk_message(sse)
    # Thinking signatures and redacted thinking too: the client must send them back.
    assert _content(received) == _content(sent)
    assert (received.stop_reason, received.stop_sequence) == (
        sent.stop_reason, sent.stop_sequence)


def test_a_streamed_stop_sequence_reaches_the_client() -> None:
    events = _events((FIXTURES / "stream_text.sse").read_text())
    for event in events:
        if event["type"] == "message_delta":
            event["delta"] = {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    sse, completion = _door_stream(events, stop_sequences=["END"])
    received = _sdk_message(sse)
    assert (received.stop_reason, received.stop_sequence) == ("stop_sequence", "END")
    # The whole answer the worker keeps (for polling and the ledger) says it too.
    assert (completion.choices[0].model_extra or {})["stop_sequence"] == "END"


# --- answers, whole --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["message_thinking.json", "message_tool_use.json",
                                  "message_text.json"])
def test_a_whole_answer_reaches_the_client_as_anthropic_sent_it(name: str) -> None:
    sent = json.loads((FIXTURES / name).read_text())
    completion = ChatCompletion.model_validate_json(
        from_anthropic_message(sent, created=1).model_dump_json())
    received = to_message(completion, "req_1", None)
    assert received["content"] == sent["content"]
    assert (received["stop_reason"], received["stop_sequence"]) == (
        sent["stop_reason"], sent["stop_sequence"])
    Message.model_validate(received)  # and the SDK reads it


def test_a_whole_answers_stop_sequence_reaches_the_client() -> None:
    sent = {**json.loads((FIXTURES / "message_thinking.json").read_text()),
            "stop_reason": "stop_sequence", "stop_sequence": "END"}
    completion = ChatCompletion.model_validate_json(
        from_anthropic_message(sent, created=1).model_dump_json())
    received = to_message(completion, "req_1", ["STOP", "END"])
    assert received["content"] == sent["content"]
    assert (received["stop_reason"], received["stop_sequence"]) == ("stop_sequence", "END")


# --- requests --------------------------------------------------------------------------


def _through(body: dict[str, Any], native: bool = True) -> ChatCompletionRequest:
    """`body` as the door hands it on, after a JSON round trip (Kafka)."""
    chat = to_chat_request(validate_body(MessagesRequest, body), native=native)
    return ChatCompletionRequest.model_validate_json(chat.model_dump_json(exclude_unset=True))


def _adapter(request: ChatCompletionRequest) -> dict[str, Any]:
    return to_anthropic_request(request, model=UPSTREAM, default_max_tokens=4096,
                                deployment="claude-1")


def test_a_request_reaches_anthropic_as_the_client_sent_it_with_every_cache_control() -> None:
    body = {
        "model": "claude", "max_tokens": 4096, "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"}, "thinking": {"type": "enabled", "budget_tokens": 2048},
        "system": [{"type": "text", "text": "You are terse."},
                   {"type": "text", "text": "A long manual.", "cache_control": CACHED}],
        "tools": [{"name": "get_weather", "description": "The weather in a city",
                   "input_schema": {"type": "object",
                                    "properties": {"city": {"type": "string"}}},
                   "cache_control": CACHED}],
        "tool_choice": {"type": "auto"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris?", "cache_control": CACHED}]},
            {"role": "assistant", "content": [
                THINKING,
                {"type": "text", "text": "Checking.", "cache_control": CACHED},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}, "cache_control": CACHED}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C",
                 "is_error": False, "cache_control": CACHED},
                {"type": "text", "text": "And tomorrow?"}]},
        ]}
    assert _adapter(_through(body)) == {**body, "model": UPSTREAM}


@pytest.mark.parametrize("effort", EFFORT_LADDER)
def test_reasoning_effort_to_a_thinking_budget_and_back_is_the_same_effort(
        effort: str) -> None:
    sent = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "user", "content": "Hi"}],
        "reasoning_effort": effort})
    thinking = _adapter(sent)["thinking"]
    back = _through({"model": "m", "max_tokens": 20000, "thinking": thinking,
                     "messages": [{"role": "user", "content": "Hi"}]}, native=False)
    assert back.model_dump()["reasoning_effort"] == effort
