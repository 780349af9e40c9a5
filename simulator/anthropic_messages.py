"""Anthropic Messages requests, checked as Anthropic checks them and read into the brain's
form: a `ChatCompletionRequest` the deterministic answer is made from.

Only what the simulator reads is declared; everything else is accepted as Anthropic
would. The checks are the ones a client most often trips: `max_tokens` is required,
the conversation starts with the user and alternates, sampling values are in range.
"""

from __future__ import annotations

from collections.abc import Iterator
from hashlib import blake2b
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.tokens import encoding_for_model
from schemas import ChatCompletionRequest
from schemas.validation import dotted_param, most_specific_error
from simulator.prompt_cache import DEFAULT_TTL_S, Breakpoint

_TTL_S = {"5m": DEFAULT_TTL_S, "1h": 3600.0}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Block(_Lenient):
    """A content block: `text`, `image`, `tool_use`, `tool_result`, `document`, …"""

    type: Annotated[str, Field(min_length=1)]
    text: str | None = None
    cache_control: dict[str, Any] | None = None


class Message(_Lenient):
    """One turn of the conversation."""

    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(_Lenient):
    """A tool the model may call (client tools have an `input_schema`)."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None


class CountTokensRequest(_Lenient):
    """Body of `POST /v1/messages/count_tokens`: a Messages body without `max_tokens`."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[Block] | None = None
    tools: list[Tool] | None = None
    tool_choice: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _alternates(self) -> CountTokensRequest:
        if self.messages[0].role != "user":
            raise ValueError('messages: first message must use the "user" role')
        for previous, message in zip(self.messages, self.messages[1:], strict=False):
            if previous.role == message.role:
                raise ValueError('messages: roles must alternate between "user" and '
                                 f'"assistant", but found multiple "{message.role}" roles '
                                 "in a row")
        return self


class MessagesRequest(CountTokensRequest):
    """Body of `POST /v1/messages`."""

    max_tokens: Annotated[int, Field(ge=1, strict=True)]
    stop_sequences: list[str] | None = None
    stream: Annotated[bool, Field(strict=True)] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None


def describe(error: ValidationError) -> str:
    """Anthropic's wording of an invalid body: `max_tokens: Field required`."""
    first = most_specific_error(error)
    if first["type"] == "json_invalid":
        return "There was an error parsing the body of your request: not valid JSON."
    message = str(first["msg"]).removeprefix("Value error, ")
    param = dotted_param(first["loc"])
    return f"{param}: {message}" if param and not message.startswith(param) else message


def to_chat_request(body: CountTokensRequest, max_tokens: int | None) -> ChatCompletionRequest:
    """The same conversation in OpenAI's form, for the brain and the token count.

    Raises:
        ValidationError: A block the OpenAI form cannot hold (an image without a source).
    """
    messages: list[dict[str, Any]] = []
    if body.system:
        messages.append({"role": "system", "content": _text(body.system)})
    for message in body.messages:
        messages += _turn(message)
    data: dict[str, Any] = {"model": body.model, "messages": messages}
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    if body.tools:
        data["tools"] = [{"type": "function", "function": {
            "name": tool.name, "description": tool.description,
            "parameters": tool.input_schema or {"type": "object"}}} for tool in body.tools]
        choice = _tool_choice(body.tool_choice)
        if choice is not None:
            data["tool_choice"] = choice
    return ChatCompletionRequest.model_validate(data)


def _turn(message: Message) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if message.role == "assistant":
        calls = [{"id": block.model_extra.get("id"), "type": "function", "function": {
            "name": block.model_extra.get("name"),
            "arguments": orjson.dumps(block.model_extra.get("input") or {}).decode()}}
            for block in message.content if block.type == "tool_use" and block.model_extra]
        turn: dict[str, Any] = {"role": "assistant", "content": _text(message.content) or None}
        if calls:
            turn["tool_calls"] = calls
        return [turn]
    # Tool results come first in a user turn; each becomes OpenAI's "tool" message.
    turns: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": (block.model_extra or {}).get("tool_use_id"),
         "content": _result_text(block)}
        for block in message.content if block.type == "tool_result"]
    parts = [part for block in message.content if (part := _part(block)) is not None]
    if parts:
        turns.append({"role": "user", "content": parts})
    return turns


def _part(block: Block) -> dict[str, Any] | None:
    extra = block.model_extra or {}
    if block.type == "text":
        return {"type": "text", "text": block.text or ""}
    if block.type == "image":
        source = extra.get("source") or {}
        url = (source.get("url") if source.get("type") == "url" else
               f"data:{source.get('media_type')};base64,{source.get('data')}")
        return {"type": "image_url", "image_url": {"url": url}}
    if block.type == "document":
        source = extra.get("source") or {}
        return {"type": "text", "text": str(source.get("data", ""))}
    return None  # thinking and server-tool blocks carry nothing the answer reads


def _result_text(block: Block) -> str:
    content = (block.model_extra or {}).get("content")
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _text(content: str | list[Block]) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.text or "" for block in content if block.type == "text")


def _tool_choice(choice: dict[str, Any] | None) -> Any:
    kind = (choice or {}).get("type")
    if kind == "none":
        return "none"
    if kind == "any":
        return "required"
    if kind == "tool" and choice is not None:
        return {"type": "function", "function": {"name": choice.get("name")}}
    return None


def cache_breakpoints(body: CountTokensRequest, encoding: str | None) -> list[Breakpoint]:
    """The prefixes marked with `cache_control`, in Anthropic's order: tools, system,
    messages; each named by a digest of the model and everything up to its mark."""
    count = encoding_for_model(body.model, encoding).count
    digest = blake2b(body.model.encode(), digest_size=16)
    tokens = 0
    points = []
    for piece, mark in _pieces(body):
        content = {key: value for key, value in piece.items() if key != "cache_control"}
        encoded = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        digest.update(encoded)
        tokens += count(str(content.get("text") or encoded.decode()))
        if mark is not None:
            ttl = _TTL_S.get(str(mark.get("ttl", "5m")), DEFAULT_TTL_S)
            points.append(Breakpoint(digest.copy().digest(), tokens, ttl))
    return points


def _pieces(body: CountTokensRequest) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    for tool in body.tools or ():
        yield tool.model_dump(mode="json", exclude_none=True), tool.cache_control
    system = body.system
    blocks = [Block(type="text", text=system)] if isinstance(system, str) else system or []
    for block in blocks:
        yield block.model_dump(mode="json", exclude_none=True), block.cache_control
    for message in body.messages:
        content = message.content
        if isinstance(content, str):
            yield {"role": message.role, "text": content}, None
            continue
        for block in content:
            yield ({"role": message.role, **block.model_dump(mode="json", exclude_none=True)},
                   block.cache_control)
