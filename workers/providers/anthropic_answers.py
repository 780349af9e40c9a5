"""Anthropic's answers in sluicegate's unified form: a Messages API `message` as a
`chat.completion`, and its streamed events as `chat.completion.chunk` dicts. Pure: no I/O.

What becomes what (the request side's table is in `anthropic_format`):

| Anthropic                                 | OpenAI form                                 |
|-------------------------------------------|---------------------------------------------|
| `text` blocks                             | `message.content`, joined                   |
| `tool_use` blocks                         | `message.tool_calls` (`arguments`: the      |
|                                           | input as JSON)                              |
| `tool_use` of `ANSWER_TOOL`               | `message.content`: the JSON answer that     |
|                                           | `response_format` asked for                 |
| `thinking` blocks                         | `message.reasoning_content` (joined), and   |
|                                           | whole in `message.thinking_blocks`          |
| `redacted_thinking` blocks                | in `message.thinking_blocks` only           |
| server tool blocks (web search, ...)      | left out: sluicegate asks for none          |
| `stop_reason`                             | `finish_reason` (`schemas.anthropic` table) |
| `stop_sequence` (the one that matched)    | the choice's `stop_sequence` (streamed: on  |
|                                           | the chunk with the finish reason)           |
| `input_tokens` + cache read + cache write | `prompt_tokens` (OpenAI counts cache hits   |
|                                           | inside it)                                  |
| `cache_read_input_tokens`                 | `prompt_tokens_details.cached_tokens`       |
| `cache_creation_input_tokens`             | `prompt_tokens_details.cache_creation_tokens` |
| `output_tokens`                           | `completion_tokens`                         |
| `output_tokens_details.thinking_tokens`   | `completion_tokens_details.reasoning_tokens` |

`thinking_blocks` keep each block's `signature`: a client continuing a tool-using
conversation sends the assistant message back with them, and `anthropic_format` puts them
first in that turn as Anthropic requires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from broker.errors import ProviderRetriable
from schemas import ChatCompletion
from schemas.anthropic import STOP_REASON_TO_FINISH
from schemas.streaming import assemble_completion

ANSWER_TOOL: Final = "sluicegate_json_answer"
"""The tool a `response_format` of JSON is asked through: its input is the answer."""
_KNOWN_EVENTS = frozenset({"content_block_start", "content_block_delta", "content_block_stop",
                           "message_delta", "message_stop"})


def from_anthropic_message(data: dict[str, Any], *, created: int | None = None) -> ChatCompletion:
    """The `chat.completion` that Anthropic's `message` object `data` says.

    Args:
        data: The body of a successful `POST /v1/messages` (or a batch result's message).
        created: Its Unix time (Anthropic sends none); default now.

    Raises:
        ValueError: `data` is not a message (no `id`, `model` or `content` list); pydantic's
            `ValidationError` is one.
    """
    blocks = data.get("content")
    if not isinstance(data.get("id"), str) or not isinstance(blocks, list):
        raise ValueError("not an Anthropic message: no id or content list")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    thinking_blocks: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use" and block.get("name") == ANSWER_TOOL:
            texts.append(_json_text(block.get("input")))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": _json_text(block.get("input") or {})}})
        elif kind in ("thinking", "redacted_thinking"):
            thinking_blocks.append(block)
            if kind == "thinking":
                reasoning.append(str(block.get("thinking") or ""))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if thinking_blocks:
        message["reasoning_content"] = "".join(reasoning)
        message["thinking_blocks"] = thinking_blocks
    usage = data.get("usage")
    return ChatCompletion.model_validate({
        "id": data["id"], "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": data.get("model") or "",
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(data.get("stop_reason"), bool(calls)),
                     # Which stop sequence ended the answer (OpenAI's form cannot say it;
                     # our Anthropic door answers it as `stop_sequence`).
                     **({"stop_sequence": data["stop_sequence"]}
                        if isinstance(data.get("stop_sequence"), str) else {})}],
        **({"usage": usage_from_anthropic(usage)} if isinstance(usage, dict) else {}),
    })


def finish_reason(stop_reason: Any, called_tools: bool) -> str:
    """OpenAI's `finish_reason` for Anthropic's `stop_reason`.

    A `tool_use` stop that called only `ANSWER_TOOL` answered in text: `stop`.
    """
    if stop_reason == "tool_use" and not called_tools:
        return "stop"
    return STOP_REASON_TO_FINISH.get(str(stop_reason), "stop")


def usage_from_anthropic(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `usage` for Anthropic's: cache reads and writes counted inside
    `prompt_tokens`, as `Usage.cached_prompt_tokens` expects (Anthropic counts them apart)."""
    fresh, read, written, output = (
        int(usage.get(name) or 0) for name in ("input_tokens", "cache_read_input_tokens",
                                               "cache_creation_input_tokens", "output_tokens"))
    prompt = fresh + read + written
    result: dict[str, Any] = {
        "prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": written}}
    # Writes to the one-hour cache cost more than to the five-minute one: kept apart.
    by_ttl = usage.get("cache_creation")
    if isinstance(by_ttl, dict) and isinstance(by_ttl.get("ephemeral_1h_input_tokens"), int):
        result["prompt_tokens_details"]["cache_creation_1h_tokens"] = min(
            by_ttl["ephemeral_1h_input_tokens"], written)
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("thinking_tokens"), int):
        result["completion_tokens_details"] = {"reasoning_tokens": details["thinking_tokens"]}
    return result


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass
class _Block:
    """What one Anthropic content block of a stream turns into."""

    kind: str  # text, tool, answer, thinking, redacted_thinking, or ignored
    tool_index: int = 0
    raw: dict[str, Any] = field(default_factory=dict)


class AnthropicStreamTranslator:
    """Turns the events of one Anthropic message stream into OpenAI chunks, in order.

    Feed it each event's JSON (`feed`); it returns the chunks to hand on: the first opens
    with `role: assistant`, text and tool-call argument pieces follow as they come (a
    tool call's index counts tool calls, not Anthropic's content blocks), `message_delta`
    gives the finish reason, and `message_stop` a last chunk with no choices and the usage,
    which the worker bills. `finished` says whether `message_stop` came.

    Args:
        deployment: Named in the errors a broken stream raises.
        created: The chunks' Unix time (Anthropic sends none); default now.
    """

    def __init__(self, deployment: str, *, created: int | None = None):
        self.deployment = deployment
        self.finished = False
        self._head: dict[str, Any] = {
            "object": "chat.completion.chunk",
            "created": int(time.time()) if created is None else created}
        self._started = False
        self._blocks: dict[int, _Block] = {}
        self._tool_calls = 0
        self._usage: dict[str, Any] = {}
        self._reasoning: list[str] = []
        self._thinking_blocks: list[dict[str, Any]] = []
        self._stop_sequence: str | None = None

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks `event` makes (none for pings, block stops and unknown events).

        Raises:
            ProviderRetriable: An `error` event, or content before `message_start`.
        """
        kind = event.get("type")
        if kind == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            raise ProviderRetriable(
                f"deployment '{self.deployment}' broke off its stream: "
                f"{error.get('type', 'error')}: {error.get('message', '')}",
                deployment=self.deployment)
        if kind == "message_start":
            return self._start(event.get("message") or {})
        if kind == "ping" or kind not in _KNOWN_EVENTS:
            return []  # Anthropic may add event types; its docs say to ignore unknown ones
        if not self._started:
            raise ProviderRetriable(f"deployment '{self.deployment}' streamed {kind} before "
                                    "message_start", deployment=self.deployment)
        index = int(event.get("index") or 0)
        if kind == "content_block_start":
            return self._open_block(index, event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._delta(self._blocks.get(index), event.get("delta") or {})
        if kind == "content_block_stop":
            return self._close_block(self._blocks.get(index))
        if kind == "message_delta":
            return self._message_delta(event)
        self.finished = True  # message_stop
        return [{**self._head, "choices": [], "usage": usage_from_anthropic(self._usage)}]

    def assemble(self, chunks: list[dict[str, Any]]) -> ChatCompletion:
        """The completion `chunks` (all this translator made) add up to, with every thinking
        block and the matched stop sequence: `assemble_completion` keeps only the last value
        of a delta field it does not know (`thinking_blocks` is one), and no choice fields
        beside the finish reason."""
        completion = assemble_completion(chunks)
        if not completion.choices or (not self._thinking_blocks
                                      and self._stop_sequence is None):
            return completion
        data = completion.model_dump(mode="json")
        choice = data["choices"][0]
        if self._thinking_blocks:
            choice["message"].update(reasoning_content="".join(self._reasoning),
                                     thinking_blocks=self._thinking_blocks)
        if self._stop_sequence is not None:
            choice["stop_sequence"] = self._stop_sequence
        return ChatCompletion.model_validate(data)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self._head, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def _start(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        self._started = True
        self._head.update(id=message.get("id") or "", model=message.get("model") or "")
        self._update_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _open_block(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "tool_use" and block.get("name") == ANSWER_TOOL:
            self._blocks[index] = _Block("answer")
        elif kind == "tool_use":
            self._blocks[index] = _Block("tool", tool_index=self._tool_calls)
            self._tool_calls += 1
            return [self._chunk({"tool_calls": [{
                "index": self._tool_calls - 1, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""}}]})]
        elif kind == "text":
            self._blocks[index] = _Block("text")
            if block.get("text"):
                return [self._chunk({"content": block["text"]})]
        elif kind in ("thinking", "redacted_thinking"):
            self._blocks[index] = _Block(str(kind), raw=dict(block))
        else:
            self._blocks[index] = _Block("ignored")
        return []

    def _delta(self, block: _Block | None, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if block is None:
            return []
        if kind == "text_delta" and block.kind == "text":
            return [self._chunk({"content": delta.get("text", "")})]
        if kind == "input_json_delta" and block.kind == "answer":
            return [self._chunk({"content": delta.get("partial_json", "")})]
        if kind == "input_json_delta" and block.kind == "tool":
            return [self._chunk({"tool_calls": [{
                "index": block.tool_index,
                "function": {"arguments": delta.get("partial_json", "")}}]})]
        if kind == "thinking_delta" and block.kind == "thinking":
            piece = str(delta.get("thinking", ""))
            block.raw["thinking"] = str(block.raw.get("thinking") or "") + piece
            self._reasoning.append(piece)
            return [self._chunk({"reasoning_content": piece})]
        if kind == "signature_delta" and block.kind == "thinking":
            block.raw["signature"] = delta.get("signature", "")
        return []

    def _close_block(self, block: _Block | None) -> list[dict[str, Any]]:
        if block is None or block.kind not in ("thinking", "redacted_thinking"):
            return []
        self._thinking_blocks.append(block.raw)
        return [self._chunk({"thinking_blocks": [block.raw]})]

    def _message_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self._update_usage(event.get("usage"))
        delta = event.get("delta") or {}
        stop_reason = delta.get("stop_reason")
        if stop_reason is None:
            return []
        chunk = self._chunk({}, finish_reason(stop_reason, self._tool_calls > 0))
        if isinstance(delta.get("stop_sequence"), str):
            # As on a whole answer's choice: our Anthropic door streams it back.
            self._stop_sequence = delta["stop_sequence"]
            chunk["choices"][0]["stop_sequence"] = self._stop_sequence
        return [chunk]

    def _update_usage(self, usage: Any) -> None:
        # message_delta's counts are cumulative: the latest of each wins.
        if isinstance(usage, dict):
            self._usage.update({name: value for name, value in usage.items()
                                if value is not None})
