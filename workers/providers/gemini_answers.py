"""Gemini answers (`GenerateContentResponse`) as OpenAI chat completions and chunks (pure).

| Gemini | OpenAI |
|---|---|
| `candidates[i]` | `choices[i]` (`index` kept) |
| text parts | `message.content`, joined (`null` when only tool calls) |
| `thought: true` text parts | `message.reasoning_content` (1) |
| `functionCall` parts | `message.tool_calls` (2) |
| other parts (images, code execution) | dropped |
| `finishReason`: `STOP` | `stop`, or `tool_calls` when the candidate called a function |
| `finishReason`: `MAX_TOKENS` | `length` |
| `finishReason`: a filter's (3) | `content_filter`, `safetyRatings` kept as `safety_ratings` |
| `finishReason`: `MALFORMED_FUNCTION_CALL`, `OTHER`, ... | `stop` (4) |
| `finishReason` other than `STOP` | also `native_finish_reason` on the choice |
| no candidates, `promptFeedback.blockReason` | one empty choice, `content_filter` (5) |
| `promptFeedback` | `prompt_feedback` |
| `logprobsResult` | `logprobs.content[] {token, logprob, bytes, top_logprobs}` |
| `promptTokenCount` + `toolUsePromptTokenCount` | `usage.prompt_tokens` |
| `cachedContentTokenCount` | `prompt_tokens_details.cached_tokens` (6) |
| `candidatesTokenCount` + `thoughtsTokenCount` | `usage.completion_tokens` |
| `thoughtsTokenCount` | `completion_tokens_details.reasoning_tokens` |
| `totalTokenCount` | `usage.total_tokens` |
| `responseId`, `modelVersion` | `id`, `model` |

1. The extra field most OpenAI-compatible servers use for reasoning text.
2. `{id, type: function, function: {name, arguments}}`: Gemini's call `id` if it gave
   one, else a new `call_...`; `arguments` is `args` as JSON. A part's `thoughtSignature`
   rides along as `extra_content.google.thought_signature` (Google's own OpenAI-compatible
   form), so a client that sends the message back keeps Gemini 3's function calling going.
3. `SAFETY`, `RECITATION`, `LANGUAGE`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`,
   `IMAGE_SAFETY`, `IMAGE_PROHIBITED_CONTENT`, `IMAGE_RECITATION`, `MODEL_ARMOR`.
4. Also `UNEXPECTED_TOOL_CALL`, `TOO_MANY_TOOL_CALLS` and any reason not listed. A
   malformed call cannot be handed on as a tool call, and trying again would be billed
   again: the (empty) answer stands, and `native_finish_reason` says why.
5. The prompt was refused: an answer with empty content, not an error.
6. Gemini counts cached tokens inside `promptTokenCount`, as OpenAI does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from schemas import ChatCompletion
from schemas.streaming import assemble_completion

_FILTERED = frozenset({"SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT",
                       "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
                       "MODEL_ARMOR"})


def finish_reason(gemini_reason: str | None, *, called: bool) -> str:
    """Gemini's `finishReason` as OpenAI's (`called`: the candidate called a function)."""
    if gemini_reason == "MAX_TOKENS":
        return "length"
    if gemini_reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if called and gemini_reason == "STOP" else "stop"


def from_gemini_response(data: dict[str, Any], *, model: str,
                         created: int | None = None) -> ChatCompletion:
    """The chat completion Gemini's `generateContent` answer `data` amounts to.

    Raises:
        ValueError: `data` has no candidates and no reason for their absence.
        pydantic.ValidationError: `data` is not shaped like an answer.
    """
    candidates = data.get("candidates") or []
    choices = []
    for number, candidate in enumerate(candidates):
        reply = _Reply.of(candidate.get("content"))
        choice = {"index": candidate.get("index", number), "message": reply.message(),
                  **_closing(candidate, called=bool(reply.calls))}
        logprobs = _logprobs(candidate.get("logprobsResult"))
        if logprobs is not None:
            choice["logprobs"] = logprobs
        choices.append(choice)
    completion: dict[str, Any] = {
        "id": data.get("responseId") or _new_id("chatcmpl-"), "object": "chat.completion",
        "created": created or int(time.time()), "model": data.get("modelVersion") or model,
        "choices": choices}
    if not candidates:
        if not (data.get("promptFeedback") or {}).get("blockReason"):
            raise ValueError("an answer without candidates or a block reason")
        completion["choices"] = [{"index": 0, "finish_reason": "content_filter",
                                  "message": {"role": "assistant", "content": ""}}]
    if data.get("promptFeedback"):
        completion["prompt_feedback"] = data["promptFeedback"]
    usage = usage_of(data.get("usageMetadata"))
    if usage is not None:
        completion["usage"] = usage
    return ChatCompletion.model_validate(completion)


def usage_of(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """Gemini's `usageMetadata` as OpenAI's `usage` (None when there is none)."""
    if not metadata:
        return None
    prompt = metadata.get("promptTokenCount", 0) + metadata.get("toolUsePromptTokenCount", 0)
    thoughts = metadata.get("thoughtsTokenCount", 0)
    completion = metadata.get("candidatesTokenCount", 0) + thoughts
    usage: dict[str, Any] = {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": metadata.get("totalTokenCount", prompt + completion)}
    if "cachedContentTokenCount" in metadata:
        usage["prompt_tokens_details"] = {"cached_tokens": metadata["cachedContentTokenCount"]}
    if thoughts:
        usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage


class _Reply:
    """A candidate's parts sorted into text, thoughts and tool calls."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.thoughts: list[str] = []
        self.calls: list[dict[str, Any]] = []

    @classmethod
    def of(cls, content: dict[str, Any] | None) -> _Reply:
        reply = cls()
        for part in (content or {}).get("parts") or ():
            if "functionCall" in part:
                reply.calls.append(_tool_call(part))
            elif isinstance(part.get("text"), str):
                (reply.thoughts if part.get("thought") else reply.text).append(part["text"])
        return reply

    def message(self) -> dict[str, Any]:
        text = "".join(self.text)
        message: dict[str, Any] = {"role": "assistant",
                                   "content": text if text or not self.calls else None}
        if self.calls:
            message["tool_calls"] = self.calls
        if self.thoughts:
            message["reasoning_content"] = "".join(self.thoughts)
        return message


def _tool_call(part: dict[str, Any]) -> dict[str, Any]:
    call = part["functionCall"]
    tool_call: dict[str, Any] = {
        "id": call.get("id") or _new_id("call_"), "type": "function",
        "function": {"name": call.get("name", ""),
                     "arguments": orjson.dumps(call.get("args") or {}).decode()}}
    if part.get("thoughtSignature"):
        tool_call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return tool_call


def _closing(candidate: dict[str, Any], *, called: bool) -> dict[str, Any]:
    """The choice's `finish_reason`, and what Gemini said beside it worth keeping."""
    reason = candidate.get("finishReason")
    closing: dict[str, Any] = {"finish_reason": finish_reason(reason, called=called)}
    if reason not in (None, "STOP"):
        closing["native_finish_reason"] = reason
    if closing["finish_reason"] == "content_filter" and candidate.get("safetyRatings"):
        closing["safety_ratings"] = candidate["safetyRatings"]
    return closing


def _logprobs(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if not result or not result.get("chosenCandidates"):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for number, chosen in enumerate(result["chosenCandidates"]):
        alternatives = (tops[number].get("candidates") or []) if number < len(tops) else []
        content.append({**_token(chosen), "top_logprobs": [_token(alt) for alt in alternatives]})
    return {"content": content, "refusal": None}


def _token(candidate: dict[str, Any]) -> dict[str, Any]:
    token = candidate.get("token", "")
    return {"token": token, "logprob": candidate.get("logProbability", 0.0),
            "bytes": list(token.encode())}


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


class GeminiStreamTranslator:
    """Turns `streamGenerateContent` events into OpenAI `chat.completion.chunk`s.

    Each Gemini event is a whole `GenerateContentResponse` holding the next parts of each
    candidate; tool calls arrive whole, so each is one chunk. `usageMetadata` is cumulative:
    the last one is the call's usage, sent by `usage_chunk` after the stream ends.
    """

    def __init__(self, *, model: str, created: int | None = None):
        self._head: dict[str, Any] = {"id": _new_id("chatcmpl-"),
                                      "object": "chat.completion.chunk",
                                      "created": created or int(time.time()), "model": model}
        self._id_seen = False
        self._calls: dict[int, list[dict[str, Any]]] = {}
        self._thoughts: dict[int, list[str]] = {}
        self._closings: dict[int, dict[str, Any]] = {}
        self._opened: set[int] = set()
        self._usage: dict[str, Any] | None = None
        self._feedback: Any = None

    @property
    def response_id(self) -> str | None:
        """Gemini's `responseId` of the call, once an event carried it."""
        return str(self._head["id"]) if self._id_seen else None

    @property
    def finished(self) -> bool:
        """Every candidate that began has a finish reason (else the stream broke off)."""
        return bool(self._opened) and self._opened <= set(self._closings)

    def translate(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks `event` adds, in order."""
        if not self._id_seen and event.get("responseId"):
            self._head["id"], self._id_seen = event["responseId"], True
        self._head["model"] = event.get("modelVersion") or self._head["model"]
        self._usage = usage_of(event.get("usageMetadata")) or self._usage
        self._feedback = event.get("promptFeedback") or self._feedback
        candidates = event.get("candidates") or []
        if not candidates and (self._feedback or {}).get("blockReason"):
            self._opened.add(0)
            self._closings[0] = {"finish_reason": "content_filter"}
            return [self._chunk(0, {"role": "assistant", "content": ""}, "content_filter")]
        chunks = []
        for number, candidate in enumerate(candidates):
            chunks += self._candidate(candidate.get("index", number), candidate)
        return chunks

    def _candidate(self, index: int, candidate: dict[str, Any]) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        calls = self._calls.setdefault(index, [])
        for part in (candidate.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                call = _tool_call(part)
                deltas.append({"tool_calls": [{"index": len(calls), **call}]})
                calls.append(call)
            elif isinstance(part.get("text"), str) and part.get("thought"):
                self._thoughts.setdefault(index, []).append(part["text"])
                deltas.append({"reasoning_content": part["text"]})
            elif isinstance(part.get("text"), str):
                deltas.append({"content": part["text"]})
        if index not in self._opened:
            self._opened.add(index)
            deltas.insert(0, {"role": "assistant"})
        chunks = [self._chunk(index, delta) for delta in deltas]
        logprobs = _logprobs(candidate.get("logprobsResult"))
        if logprobs is not None and chunks:
            chunks[-1]["choices"][0]["logprobs"] = logprobs
        if candidate.get("finishReason"):
            closing = _closing(candidate, called=bool(calls))
            self._closings[index] = closing
            chunks.append(self._chunk(index, {}, closing["finish_reason"]))
        return chunks

    def _chunk(self, index: int, delta: dict[str, Any],
               finish: str | None = None) -> dict[str, Any]:
        return {**self._head, "choices": [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def usage_chunk(self) -> dict[str, Any] | None:
        """The last chunk: no choices, the call's usage (None if Gemini reported none)."""
        if self._usage is None:
            return None
        return {**self._head, "choices": [], "usage": self._usage}

    def completion(self, chunks: list[dict[str, Any]]) -> ChatCompletion:
        """`assemble_completion(chunks)`, with what chunk merging cannot rebuild put back:
        the thoughts (joined), each tool call whole, and the Gemini-only fields."""
        assembled = assemble_completion(chunks).model_dump(mode="json")
        for choice in assembled["choices"]:
            index = choice["index"]
            message = choice["message"]
            if self._thoughts.get(index):
                message["reasoning_content"] = "".join(self._thoughts[index])
            if self._calls.get(index):
                message["tool_calls"] = self._calls[index]
            choice.update(self._closings.get(index, {}))
        if self._feedback:
            assembled["prompt_feedback"] = self._feedback
        return ChatCompletion.model_validate(assembled)
