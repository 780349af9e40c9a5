"""An Anthropic Messages body as our unified (OpenAI chat) request.

Checked first as Anthropic defines it, so a mistake is answered 400 naming the Anthropic
field (`max_tokens`, `messages[0].content[1].source`); then translated:

- `system` (a string or text blocks) becomes the first, system, message;
- text and image blocks become content parts (a base64 image a `data:` URL, a URL image
  its URL); a base64 PDF document a `file` part, a plain-text document a text part;
- an assistant's `tool_use` blocks become its `tool_calls` (arguments: the input's JSON);
  a user's `tool_result` blocks become `tool` messages ahead of the rest of that turn
  (images in a result follow in a user message: OpenAI's tool messages carry text only);
- `stop_sequences` → `stop`, `metadata.user_id` → `user`, tools' `input_schema` →
  `parameters`, `tool_choice` auto/any/tool/none → `auto`/`required`/the named function/
  `none` (`disable_parallel_tool_use` → `parallel_tool_calls: false`); `max_tokens`,
  `temperature`, `top_p` keep their names.

What only Anthropic's API understands is kept for a model served by Anthropic alone (every
deployment `provider: anthropic`), so that adapter gets it back: `thinking`, `top_k`,
`output_config`, `cache_control` (on parts, tools, tool calls — the tool call entry — and
tool results — the tool message), `is_error` on tool results, earlier
thinking blocks (`thinking_blocks` on the assistant message), and any parameter this door
does not know. For any other model it is expressed the OpenAI way where a way exists —
`thinking.budget_tokens` (and `output_config.effort`) → `reasoning_effort` (the budget's
nearest effort in `schemas.anthropic`'s table, the one the adapter reads the other way),
`output_config.format` → `response_format` — and otherwise left out (the provider could
only refuse it, or caches prompts by itself).
"""

from __future__ import annotations

from typing import Any

import orjson

from broker.errors import InvalidRequest
from ingress.anthropic.params import (
    Base64Source,
    DocumentBlock,
    ImageBlock,
    MessagesBody,
    TextBlock,
    TextSource,
    ThinkingBlock,
    ToolChoice,
    ToolDefinition,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)
from ingress.body import validate_body
from schemas import ChatCompletionRequest
from schemas.anthropic import effort_for_budget

# Hints an OpenAI-compatible provider has no use for (dropped for those models).
_ANTHROPIC_HINTS = frozenset({"service_tier", "inference_geo", "speed", "diagnostics",
                              "cache_control", "container", "context_management"})


def to_chat_request(body: MessagesBody, *, native: bool) -> ChatCompletionRequest:
    """Our request for `body`; `native`: every deployment of the model is Anthropic's.

    Raises:
        InvalidRequest: `body` asks for something the translation cannot express.
    """
    chat: dict[str, Any] = {"model": body.model, "messages": _messages(body, native)}
    for name in ("max_tokens", "temperature", "top_p", "stream"):
        if getattr(body, name) is not None:
            chat[name] = getattr(body, name)
    if body.stop_sequences:
        chat["stop"] = list(body.stop_sequences)
    if body.metadata is not None and body.metadata.user_id is not None:
        chat["user"] = body.metadata.user_id
    if body.tools:
        chat["tools"] = [_tool(tool, native) for tool in body.tools]
    if body.tool_choice is not None:
        chat.update(_tool_choice(body.tool_choice, bool(body.tools)))
    if native:
        chat.update(body.model_dump(include={"top_k", "thinking", "output_config"},
                                    exclude_none=True))
        chat.update(body.model_extra or {})
    else:
        chat.update(_portable_options(body))
        chat.update({key: value for key, value in (body.model_extra or {}).items()
                     if key not in _ANTHROPIC_HINTS})
    return validate_body(ChatCompletionRequest, chat)


def _portable_options(body: MessagesBody) -> dict[str, Any]:
    """`thinking` and `output_config` the OpenAI way."""
    options: dict[str, Any] = {}
    output = body.output_config
    if output is not None and output.effort is not None:
        options["reasoning_effort"] = output.effort if output.effort in (
            "low", "medium") else "high"
    thinking = body.thinking
    if thinking is not None and thinking.type == "enabled" and thinking.budget_tokens:
        options["reasoning_effort"] = effort_for_budget(thinking.budget_tokens)
    elif thinking is not None and thinking.type == "adaptive":
        options.setdefault("reasoning_effort", "medium")
    if output is not None and output.format is not None:
        if output.format.get("type") != "json_schema" or not isinstance(
                output.format.get("schema"), dict):
            raise InvalidRequest("output_config.format must be {'type': 'json_schema', "
                                 "'schema': {...}}.", param="output_config.format")
        options["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": output.format["schema"], "strict": True}}
    return options


def _tool(tool: ToolDefinition, native: bool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    entry: dict[str, Any] = {"type": "function", "function": function}
    if native and tool.cache_control is not None:
        entry["cache_control"] = tool.cache_control
    return entry


def _tool_choice(choice: ToolChoice, has_tools: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice of type 'tool' needs the tool's 'name'.",
                                 param="tool_choice.name")
        options["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        options["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[
            choice.type]
    if choice.disable_parallel_tool_use and has_tools:  # OpenAI refuses it without tools
        options["parallel_tool_calls"] = False
    return options


def _messages(body: MessagesBody, native: bool) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if isinstance(body.system, str) and body.system:
        messages.append({"role": "system", "content": body.system})
    elif isinstance(body.system, list) and body.system:
        messages.append({"role": "system", "content": [
            _text_part(block, native) for block in body.system]})
    for number, message in enumerate(body.messages):
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
        elif message.role == "assistant":
            messages.append(_assistant(message.content, native, number))
        else:
            messages.extend(_user(message.content, native, number))
    return messages


def _user(blocks: list[Any], native: bool, number: int) -> list[dict[str, Any]]:
    """Tool results first (as `tool` messages), then the turn's other content."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        where = f"messages[{number}].content[{index}]"
        if isinstance(block, ToolResultBlock):
            results.append(_tool_message(block, native, parts))
        elif isinstance(block, ToolUseBlock | ThinkingBlock):
            raise InvalidRequest(f"A user message cannot carry a '{block.type}' block.",
                                 param=f"{where}.type")
        else:
            parts.append(_part(block, native, where))
    if parts or not results:
        results.append({"role": "user", "content": parts or ""})
    return results


def _tool_message(block: ToolResultBlock, native: bool,
                  images: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "tool", "tool_call_id": block.tool_use_id}
    if isinstance(block.content, str):
        message["content"] = block.content
    else:
        message["content"] = [_text_part(item, native) for item in block.content
                              if isinstance(item, TextBlock)]
        images.extend(_image_part(item, native) for item in block.content
                      if isinstance(item, ImageBlock))
    if native and block.is_error is not None:
        message["is_error"] = block.is_error
    if native and block.cache_control is not None:
        message["cache_control"] = block.cache_control
    return message


def _assistant(blocks: list[Any], native: bool, number: int) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            parts.append(_text_part(block, native))
        elif isinstance(block, ToolUseBlock):
            calls.append(_cached({"id": block.id, "type": "function", "function": {
                "name": block.name, "arguments": orjson.dumps(block.input).decode()}},
                block.cache_control, native))
        elif isinstance(block, ThinkingBlock):
            thinking.append(block.model_dump())
        else:
            raise InvalidRequest(f"An assistant message cannot carry a '{block.type}' block.",
                                 param=f"messages[{number}].content[{index}].type")
    message: dict[str, Any] = {"role": "assistant"}
    if any("cache_control" in part for part in parts):
        message["content"] = parts
    elif parts:
        message["content"] = "".join(part["text"] for part in parts)
    else:
        message["content"] = None if calls else ""
    if calls:
        message["tool_calls"] = calls
    if native and thinking:
        message["thinking_blocks"] = thinking
    return message


def _part(block: Any, native: bool, where: str) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return _text_part(block, native)
    if isinstance(block, ImageBlock):
        return _image_part(block, native)
    assert isinstance(block, DocumentBlock)
    source = block.source
    if isinstance(source, TextSource):
        part: dict[str, Any] = {"type": "text", "text": source.data}
    elif source.media_type == "application/pdf":
        part = {"type": "file", "file": {"filename": block.title or "document.pdf",
                                         "file_data": _data_url(source)}}
    else:
        raise InvalidRequest("A base64 document must be a PDF ('application/pdf').",
                             param=f"{where}.source.media_type")
    return _cached(part, block.cache_control, native)


def _text_part(block: TextBlock, native: bool) -> dict[str, Any]:
    return _cached({"type": "text", "text": block.text}, block.cache_control, native)


def _image_part(block: ImageBlock, native: bool) -> dict[str, Any]:
    source = block.source
    url = source.url if isinstance(source, UrlSource) else _data_url(source)
    return _cached({"type": "image_url", "image_url": {"url": url}}, block.cache_control,
                   native)


def _data_url(source: Base64Source) -> str:
    return f"data:{source.media_type};base64,{source.data}"


def _cached(part: dict[str, Any], cache_control: dict[str, Any] | None,
            native: bool) -> dict[str, Any]:
    if native and cache_control is not None:
        part["cache_control"] = cache_control
    return part
