"""Our answer (an OpenAI `chat.completion`) as an Anthropic `message`.

- content, in Anthropic's order: thinking (the adapter's `thinking_blocks` with their
  signatures, else `reasoning_content`), the text (or a refusal's text), then one
  `tool_use` block per tool call, its `input` the parsed arguments;
- `stop_reason` from `finish_reason` (`schemas.anthropic`); `stop` becomes `stop_sequence`,
  with `stop_sequence` set, when the choice says which of the request's stop sequences
  matched (`stop_sequence` from an adapter, or vLLM's `stop_reason`); OpenAI's own API
  never says, and then it is `end_turn`;
- usage: OpenAI counts cache reads and writes inside `prompt_tokens`, Anthropic apart, so
  `input_tokens` is what is left of `prompt_tokens` after both.

The message id is `msg_` and the hex of our request id, so it can still be looked up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from schemas import ChatCompletion, Usage
from schemas.anthropic import FINISH_TO_STOP_REASON
from schemas.chat import CompletionMessage, ToolCall


def message_id(request_id: str) -> str:
    """`msg_<hex>` for our `req_<hex>` (a batch line's id keeps its own prefix after it)."""
    return "msg_" + request_id.removeprefix("req_")


def matched_stop_sequence(fields: Mapping[str, Any],
                          stop_sequences: Sequence[str] | None) -> str | None:
    """Which of `stop_sequences` a choice (or a chunk's choice) says it stopped at."""
    for key in ("stop_sequence", "stop_reason"):
        value = fields.get(key)
        if isinstance(value, str) and value in (stop_sequences or ()):
            return value
    return None


def stop_reason(finish_reason: str | None, matched: str | None) -> str:
    """Anthropic's `stop_reason` for an OpenAI `finish_reason`."""
    if finish_reason in (None, "stop") and matched is not None:
        return "stop_sequence"
    return FINISH_TO_STOP_REASON.get(finish_reason or "stop", "end_turn")


def usage_body(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage: cache reads and writes apart from the other input tokens."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0}
    cached, written = usage.cached_prompt_tokens(), usage.cache_write_prompt_tokens()
    return {"input_tokens": usage.prompt_tokens - cached - written,
            "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": written}


def tool_input(arguments: str | None) -> dict[str, Any]:
    """A tool call's arguments as the `input` object (`{}` when they are not one)."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def content_blocks(message: CompletionMessage) -> list[dict[str, Any]]:
    """The message's content blocks, thinking first and tool calls last."""
    extra = message.model_extra or {}
    blocks: list[dict[str, Any]] = [
        block for block in extra.get("thinking_blocks") or ()
        if isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking")]
    reasoning = extra.get("reasoning_content")
    if not blocks and isinstance(reasoning, str) and reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.content or extra.get("refusal")
    if isinstance(text, str) and text:
        blocks.append({"type": "text", "text": text})
    blocks.extend(tool_use_block(call, number)
                  for number, call in enumerate(message.tool_calls or ()))
    return blocks


def tool_use_block(call: ToolCall, number: int) -> dict[str, Any]:
    """A `tool_use` block for one tool call (an id made up if the provider sent none)."""
    function = call.function
    return {"type": "tool_use", "id": call.id or f"toolu_{number}",
            "name": (function.name if function else None) or "",
            "input": tool_input(function.arguments if function else None)}


def to_message(completion: ChatCompletion, request_id: str,
               stop_sequences: Sequence[str] | None) -> dict[str, Any]:
    """The `message` object of `completion`'s first choice (Anthropic has no `n`)."""
    choice = completion.choices[0] if completion.choices else None
    blocks = content_blocks(choice.message) if choice is not None else []
    matched = (matched_stop_sequence(choice.model_extra or {}, stop_sequences)
               if choice is not None else None)
    reason = stop_reason(choice.finish_reason if choice is not None else None, matched)
    return {"id": message_id(request_id), "type": "message", "role": "assistant",
            "model": completion.model, "content": blocks, "stop_reason": reason,
            "stop_sequence": matched if reason == "stop_sequence" else None,
            "usage": usage_body(completion.usage)}
