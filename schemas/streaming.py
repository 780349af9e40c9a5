"""Streamed answers: OpenAI's `chat.completion.chunk` objects, and the whole they add up to.

A worker streaming an answer publishes each provider chunk as a `StreamChunk` on the
waiting ingress instance's reply topic (keyed by request id, so in order), then the final
`InferenceResult`, whose completion is `assemble_completion` of every chunk: what the
ledger records and `GET /v1/requests/{id}` returns is the same answer the client saw.
"""

from __future__ import annotations

from typing import Any

import orjson

from schemas.chat import ChatCompletion

_ARGUMENT_PIECE = 8  # characters of tool-call arguments per chunk

CHUNK_KIND = "chunk"
"""The `kind` header of a `StreamChunk` record on a reply topic (results carry none)."""


def stream_chunks(completion: ChatCompletion, *, include_usage: bool) -> list[dict[str, Any]]:
    """The chunks `completion` streams as, the way OpenAI sends them.

    Each choice opens with its role, sends its text a word at a time (or its tool call's
    name, then its arguments in pieces) and closes with its finish reason; with
    `include_usage` every chunk carries `"usage": null` and a last chunk with no choices
    carries the usage. `assemble_completion` turns them back into `completion`.
    """
    head = {"id": completion.id, "object": "chat.completion.chunk",
            "created": completion.created, "model": completion.model,
            "system_fingerprint": completion.system_fingerprint}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
              logprobs: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = {**head, "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return body

    chunks = []
    for choice in completion.choices:
        message = choice.message
        # OpenAI opens a tool-calling answer with null content, a text answer with "".
        opening = None if message.tool_calls else ""
        chunks.append(chunk(choice.index, {"role": "assistant", "content": opening,
                                           "refusal": None}))
        for number, call in enumerate(message.tool_calls or ()):
            function = call.function
            name = function.name if function else ""
            arguments = (function.arguments if function else "") or ""
            chunks.append(chunk(choice.index, {"tool_calls": [
                {"index": number, "id": call.id, "type": "function",
                 "function": {"name": name, "arguments": ""}}]}))
            for start in range(0, len(arguments), _ARGUMENT_PIECE):
                chunks.append(chunk(choice.index, {"tool_calls": [
                    {"index": number,
                     "function": {"arguments": arguments[start:start + _ARGUMENT_PIECE]}}]}))
        text = message.content or ""
        pieces = [word if i == 0 else " " + word for i, word in enumerate(text.split(" "))]
        token_logprobs = _token_logprobs(choice)
        for i, piece in enumerate(pieces if text else []):
            logprobs = ({"content": [token_logprobs[i]], "refusal": None}
                        if i < len(token_logprobs) else None)
            chunks.append(chunk(choice.index, {"content": piece}, logprobs=logprobs))
        chunks.append(chunk(choice.index, {}, finish=choice.finish_reason))
    if include_usage and completion.usage is not None:
        chunks.append({**head, "choices": [],
                       "usage": completion.usage.model_dump(mode="json", exclude_none=True)})
    return chunks


def _token_logprobs(choice: Any) -> list[Any]:
    logprobs = (choice.model_extra or {}).get("logprobs")
    return list(logprobs.get("content") or []) if isinstance(logprobs, dict) else []


def is_usage_only(chunk: dict[str, Any]) -> bool:
    """The final chunk `stream_options.include_usage` adds: usage, and no choices."""
    return not chunk.get("choices") and chunk.get("usage") is not None


def assemble_completion(chunks: list[dict[str, Any]]) -> ChatCompletion:
    """The `chat.completion` that `chunks` stream, deltas merged per choice.

    Text, refusals and tool-call arguments are concatenated; tool calls are merged by their
    `index`; logprobs lists are joined; the last finish reason and usage win.
    """
    choices: dict[int, dict[str, Any]] = {}
    head: dict[str, Any] = {}
    usage: Any = None
    for chunk in chunks:
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key in chunk and (chunk[key] is not None or key not in head):
                head[key] = chunk[key]
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for delta_choice in chunk.get("choices") or ():
            index = int(delta_choice.get("index", 0))
            choice = choices.setdefault(index, {
                "index": index, "message": {"role": "assistant", "content": None},
                "finish_reason": None, "logprobs": None})
            _merge_delta(choice["message"], delta_choice.get("delta") or {})
            if delta_choice.get("finish_reason") is not None:
                choice["finish_reason"] = delta_choice["finish_reason"]
            _merge_logprobs(choice, delta_choice.get("logprobs"))
    for choice in choices.values():
        calls = choice["message"].pop("_tool_calls", None)
        if calls:
            choice["message"]["tool_calls"] = [calls[i] for i in sorted(calls)]
    return ChatCompletion.model_validate({
        "id": head.get("id", ""), "object": "chat.completion",
        "created": head.get("created", 0), "model": head.get("model", ""),
        **{key: head[key] for key in ("system_fingerprint", "service_tier") if key in head},
        "choices": [choices[i] for i in sorted(choices)],
        **({"usage": usage} if usage is not None else {}),
    })


def _merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        if value is None:
            continue
        if key == "tool_calls":
            calls = message.setdefault("_tool_calls", {})
            for part in value:
                call = calls.setdefault(int(part.get("index", 0)), {
                    "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                for field in ("id", "type"):
                    if part.get(field) is not None:
                        call[field] = part[field]
                function = part.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
        elif key in ("content", "refusal", "reasoning_content") and isinstance(value, str):
            # `reasoning_content`: the thinking that reasoning servers (vLLM, DeepSeek) and
            # our Anthropic and Gemini adapters stream beside the answer, piece by piece.
            message[key] = (message.get(key) or "") + value
        elif key == "function_call" and isinstance(value, dict):
            merged = message.setdefault("function_call", {"name": "", "arguments": ""})
            merged["name"] += value.get("name") or ""
            merged["arguments"] += value.get("arguments") or ""
        else:
            message[key] = value


def _merge_logprobs(choice: dict[str, Any], logprobs: Any) -> None:
    if not isinstance(logprobs, dict):
        return
    merged = choice["logprobs"] or {"content": None, "refusal": None}
    for key in ("content", "refusal"):
        if logprobs.get(key):
            merged[key] = (merged[key] or []) + list(logprobs[key])
    choice["logprobs"] = merged


SSE_DONE = b"data: [DONE]\n\n"
"""The server-sent event that ends an OpenAI stream."""


def sse_event(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying `data` as JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"
