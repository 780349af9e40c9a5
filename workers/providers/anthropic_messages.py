"""An OpenAI conversation as Anthropic's `system` and alternating `messages`. Pure: no I/O.

Anthropic keeps the system prompt apart from the conversation, has only `user` and
`assistant` turns, and wants them to alternate; tool calls and results are content blocks
of those turns. So: system and developer messages (wherever they stand) join the top-level
`system`; a tool message becomes a `tool_result` block of a user turn; messages of the same
role in a row merge into one turn, which also puts consecutive tool results in one user
message, as Anthropic requires for parallel tool calls.

`cache_control` (Anthropic's, kept by our Anthropic door) travels on the block it marks: a
content part's on its block, a tool call entry's on its `tool_use` block, a tool message's
on its `tool_result` block.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from broker.errors import UnsupportedParameter
from schemas import ChatMessage
from schemas.chat import ContentPart

# `data:<media type>;base64,<data>`, the only data URL form OpenAI documents for images.
_DATA_URL = re.compile(r"data:(?P<media_type>[^;,]+);base64,(?P<data>.*)", re.DOTALL)
_SYSTEM_ROLES = ("system", "developer")


def to_anthropic_conversation(
    messages: list[ChatMessage], *, deployment: str, drop_names: bool = False,
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """`messages` as Anthropic's `(system, messages)`.

    `system` is a string, or text blocks when a part carries `cache_control` (a string has
    nowhere to put it); None without system messages.

    Args:
        messages: The conversation in OpenAI's form.
        deployment: Named in errors.
        drop_names: Leave out messages' `name` instead of refusing them (an operator's
            choice through `drop_params: [name]`).

    Raises:
        UnsupportedParameter: A part or role Anthropic cannot take (audio, OpenAI file ids,
            legacy `function` messages), a participant `name`, or tool-call arguments that
            are not a JSON object.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if message.name and message.role != "tool" and not drop_names:
            raise UnsupportedParameter(
                f"{where}.name: Anthropic has no participant names; the deployment can be "
                "told to drop them (drop_params: [name])",
                param="name", deployment=deployment)
        if message.role in _SYSTEM_ROLES:
            system.extend(_blocks(message, where, deployment, text_only=True))
            continue
        role, blocks = _turn(message, where, deployment)
        if not blocks:
            continue  # an empty message says nothing, and Anthropic refuses empty turns
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        turn["content"] = _plain_if_one_text(turn["content"])
    return _system(system), turns


def _system(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    if not blocks:
        return None
    if any("cache_control" in block for block in blocks):
        return blocks
    return "\n\n".join(block["text"] for block in blocks)


def _plain_if_one_text(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone text block as a string: the shape people read in Anthropic's docs and logs."""
    if len(blocks) == 1 and set(blocks[0]) == {"type", "text"} and blocks[0]["type"] == "text":
        return str(blocks[0]["text"])
    return blocks


def _turn(message: ChatMessage, where: str,
          deployment: str) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "user":
        return "user", _blocks(message, where, deployment)
    if message.role == "assistant":
        return "assistant", _assistant_blocks(message, where, deployment)
    if message.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        content = _blocks(message, where, deployment)
        result["content"] = _plain_if_one_text(content) if content else ""
        # Anthropic's own fields, sent through our Anthropic door: the tool failed, and
        # where a cached prefix ends (on the result block, where the door found it).
        extra = message.model_extra or {}
        if isinstance(extra.get("is_error"), bool):
            result["is_error"] = extra["is_error"]
        if extra.get("cache_control") is not None:
            result["cache_control"] = extra["cache_control"]
        return "user", [result]
    raise UnsupportedParameter(
        f"{where}: legacy '{message.role}' messages have no Anthropic equivalent; use tools",
        param="messages", deployment=deployment)


def _assistant_blocks(message: ChatMessage, where: str,
                      deployment: str) -> list[dict[str, Any]]:
    # Thinking blocks from an earlier answer go back first and unchanged: Anthropic checks
    # their signatures, and needs them when a thinking turn continues after a tool call.
    thinking = (message.model_extra or {}).get("thinking_blocks")
    blocks: list[dict[str, Any]] = [dict(block) for block in thinking or ()
                                    if isinstance(block, dict)]
    blocks.extend(_blocks(message, where, deployment))
    for number, call in enumerate(message.tool_calls or ()):
        function = call.function
        arguments = (function.arguments if function else None) or "{}"
        try:
            tool_input = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            tool_input = None
        if not isinstance(tool_input, dict):
            raise UnsupportedParameter(
                f"{where}.tool_calls[{number}].function.arguments: Anthropic needs a JSON "
                "object", param="messages", deployment=deployment)
        block: dict[str, Any] = {"type": "tool_use", "id": call.id,
                                 "name": function.name if function else None,
                                 "input": tool_input}
        cache_control = (call.model_extra or {}).get("cache_control")  # from our door
        if cache_control is not None:
            block["cache_control"] = cache_control
        blocks.append(block)
    if message.function_call is not None:
        raise UnsupportedParameter(
            f"{where}.function_call: legacy function calls have no Anthropic equivalent; "
            "use tool_calls", param="messages", deployment=deployment)
    return blocks


def _blocks(message: ChatMessage, where: str, deployment: str, *,
            text_only: bool = False) -> list[dict[str, Any]]:
    """The message's content as Anthropic blocks; empty text is left out (Anthropic refuses
    empty text blocks, and they say nothing)."""
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}] if message.content else []
    blocks = []
    for number, part in enumerate(message.parts()):
        block = _block(part, f"{where}.content[{number}]", deployment)
        if text_only and block["type"] != "text":
            raise UnsupportedParameter(
                f"{where}: Anthropic's system prompt takes text only, not '{part.type}'",
                param="messages", deployment=deployment)
        if block["type"] != "text" or block["text"]:
            blocks.append(block)
    return blocks


def _block(part: ContentPart, where: str, deployment: str) -> dict[str, Any]:
    extra = part.model_extra or {}
    block: dict[str, Any]
    if part.type == "text" or part.type == "refusal":
        block = {"type": "text", "text": part.text if part.type == "text" else part.refusal}
    elif part.type == "image_url" and part.image_url is not None:
        # `detail` only sets how many tokens OpenAI spends on the image; Anthropic sizes
        # images itself, so it is left out.
        block = {"type": "image", "source": _source(part.image_url.url, where, deployment)}
    elif part.type == "file":
        block = _document(extra.get("file") or {}, where, deployment)
    else:
        raise UnsupportedParameter(
            f"{where}: Anthropic's Messages API takes no '{part.type}' content",
            param="messages", deployment=deployment)
    if extra.get("cache_control") is not None:
        block["cache_control"] = extra["cache_control"]
    return block


def _source(url: str, where: str, deployment: str) -> dict[str, Any]:
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise UnsupportedParameter(
            f"{where}: Anthropic takes images as http(s) URLs or base64 data URLs",
            param="messages", deployment=deployment)
    return {"type": "base64", "media_type": match["media_type"], "data": match["data"]}


def _document(file: dict[str, Any], where: str, deployment: str) -> dict[str, Any]:
    """An OpenAI `file` part carrying a PDF's bytes as an Anthropic `document` block."""
    match = _DATA_URL.fullmatch(str(file.get("file_data") or ""))
    if match is None or match["media_type"] != "application/pdf":
        raise UnsupportedParameter(
            f"{where}: Anthropic takes files here only as PDF data URLs (`file_data`); "
            "OpenAI file ids mean nothing to it", param="messages", deployment=deployment)
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                           "data": match["data"]}}
