"""The deterministic brain of the simulated provider.

Shared by the HTTP simulator (`sluice mock-provider`) and the in-process simulated
deployment, so both answer the same prompt with the same text and the same usage. The
answer is plain English words, each a single token in every bundled encoding, chosen by a
hash of the prompt; its usage is counted with the model's real encoding, so budgets and
the ledger see token-accurate numbers. It is on the benchmark hot path: keep it cheap.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from hashlib import blake2b
from typing import Any

from broker.tokens import count_request_prompt_tokens, encoding_for_model
from schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    CompletionMessage,
    CompletionTokensDetails,
    PromptTokensDetails,
    ToolCall,
    Usage,
)
from schemas.chat import FunctionCall, FunctionDefinition
from simulator.json_instances import instance_of

# Common words that are one token each, with and without a leading space, in cl100k_base,
# o200k_base, llama3 and qwen3, so n words (or n-1 and a full stop) are n tokens.
WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "it", "for", "was", "on", "are", "with",
    "as", "be", "at", "by", "this", "have", "from", "or", "one", "had", "not", "but", "what",
    "all", "were", "when", "we", "there", "can", "an", "your", "which", "their", "said", "if",
    "do", "will", "each", "about", "how", "up", "out", "them", "then", "she", "many", "some",
    "so", "these", "would", "other", "into", "has", "more", "her", "two", "like", "him",
    "see", "time", "could",
)  # fmt: skip

_MASK64 = (1 << 64) - 1
# Knuth's MMIX linear congruential generator: cheap, and plenty for picking words.
REASONING_TOKENS = {"minimal": 8, "low": 16, "medium": 64, "high": 256}
"""Reasoning tokens per choice the simulator reports for each `reasoning_effort`."""
_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1442695040888963407


@lru_cache(maxsize=64)
def _words_for(encoding: str) -> tuple[str, ...]:
    """The words that really are single tokens in `encoding` (all of them, when bundled)."""
    count = encoding_for_model("", encoding).count
    words = tuple(w for w in WORDS if count(w) == 1 and count(" " + w) == 1)
    # An encoding where no word fits still gets text; its usage is then counted, not assumed.
    return words or WORDS


def _prompt_seed(body: ChatCompletionRequest) -> int:
    digest = blake2b(digest_size=8)
    for message in body.messages:
        digest.update(f"{message.role}\x00{message.name or ''}\x00{message.text()}\x01".encode())
    return int.from_bytes(digest.digest(), "little")


def _text(seed: int, words: tuple[str, ...], count: int, *, full_stop: bool) -> str:
    """`count` tokens of words; a finished answer ends with a full stop (one more token)."""
    if count <= 0:
        return ""
    n_words = count - 1 if full_stop and count > 1 else count
    picked = []
    state = seed
    size = len(words)
    for _ in range(n_words):
        state = (state * _LCG_MULTIPLIER + _LCG_INCREMENT) & _MASK64
        picked.append(words[(state >> 40) % size])
    text = " ".join(picked)
    return text + "." if n_words < count else text


def simulate_completion(
    body: ChatCompletionRequest,
    *,
    upstream_model: str,
    output_tokens: int = 16,
    request_id: str | None = None,
    created: int | None = None,
    encoding: str | None = None,
    cached_share: float = 0.0,
    answer_bytes: int | None = None,
) -> ChatCompletion:
    """Answer `body` deterministically, with token-accurate usage.

    Args:
        body: The chat completion request.
        upstream_model: The model name reported back and used to choose the encoding.
        output_tokens: How many tokens a "natural" answer has; `max_tokens` (or
            `max_completion_tokens`) below this truncates it with finish_reason "length".
        request_id: The completion id; a fresh `chatcmpl-sim-<hex>` when None.
        created: Unix time of the completion; now when None.
        encoding: An encoding name overriding the guess from `upstream_model`.
        cached_share: Share of the prompt tokens reported as prompt-cache hits
            (`usage.prompt_tokens_details.cached_tokens`); 0 reports no details at all.
        answer_bytes: Make the answer's text exactly this many bytes (the natural answer
            repeated), to test what happens to answers too large to queue.

    Returns:
        A `chat.completion`; the same prompt always gets the same text.
    """
    token_encoding = encoding_for_model(upstream_model, encoding)
    words = _words_for(token_encoding.name)
    limit = body.output_limit()
    truncated = limit is not None and limit < output_tokens
    target = limit if truncated and limit is not None else output_tokens
    extra = body.model_extra or {}
    choices = []
    completion_tokens = 0
    for index in range(body.choices()):
        text = _text(_prompt_seed(body) + index, words, target, full_stop=not truncated)
        if answer_bytes is not None:
            text = (text + " ") * (answer_bytes // (len(text) + 1) + 1)
            text = text.encode()[:answer_bytes].decode(errors="ignore")
        message, finish_reason, produced = _message(body, text, words)
        # Counted, not assumed: the word list guarantees `target` for bundled encodings,
        # and the count keeps usage honest for any other.
        completion_tokens += token_encoding.count(produced)
        fields: dict[str, Any] = {}
        if extra.get("logprobs") is True:
            fields["logprobs"] = _logprobs(produced, words, int(extra.get("top_logprobs") or 0))
        choices.append(Choice.model_construct(
            index=index, message=message,
            finish_reason="length" if truncated and finish_reason == "stop" else finish_reason,
            **fields))
    prompt_tokens = count_request_prompt_tokens(body, upstream_model, encoding)
    # A reasoning model thinks before it answers: those tokens are part of
    # `completion_tokens` (and billed as output), reported apart in the details.
    reasoning = REASONING_TOKENS.get(str(extra.get("reasoning_effort")), 0) * len(choices)
    completion_tokens += reasoning
    details = None
    if cached_share > 0:
        details = PromptTokensDetails.model_construct(
            cached_tokens=int(prompt_tokens * min(cached_share, 1.0))
        )
    # model_construct: every value here is built by us and already valid, and validation
    # would cost more than the whole rest of the simulation.
    return ChatCompletion.model_construct(
        id=request_id or f"chatcmpl-sim-{os.urandom(12).hex()}",
        object="chat.completion",
        created=int(time.time()) if created is None else created,
        model=upstream_model,
        choices=choices,
        usage=Usage.model_construct(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=details,
            completion_tokens_details=(
                CompletionTokensDetails.model_construct(reasoning_tokens=reasoning)
                if reasoning else None),
        ),
        system_fingerprint=None,
    )


def _message(body: ChatCompletionRequest, text: str,
             words: tuple[str, ...]) -> tuple[CompletionMessage, str, str]:
    """The assistant message, its finish reason and the text its tokens are counted from.

    A request with tools gets a call of the tool it names (or the first), its arguments
    valid against the tool's parameters, until the conversation ends with a tool result;
    `response_format` gets JSON (valid against `json_schema` when one is given).
    """
    called = _called_function(body)
    if called is not None:
        arguments = json.dumps(instance_of(called.parameters or {}, words=words))
        call = FunctionCall.model_construct(name=called.name, arguments=arguments)
        if body.tools:
            tool_call = ToolCall.model_construct(
                id=f"call_{blake2b(text.encode(), digest_size=8).hexdigest()}",
                type="function", function=call)
            message = CompletionMessage.model_construct(
                role="assistant", content=None, tool_calls=[tool_call])
            return message, "tool_calls", called.name + arguments
        message = CompletionMessage.model_construct(role="assistant", content=None,
                                                    function_call=call)
        return message, "function_call", called.name + arguments
    response_format = body.response_format
    if response_format is not None and response_format.type == "json_schema":
        schema = (response_format.json_schema or {}).get("schema", {})
        text = json.dumps(instance_of(schema, words=words))
    elif response_format is not None and response_format.type == "json_object":
        text = json.dumps({"answer": text})
    return CompletionMessage.model_construct(role="assistant", content=text), "stop", text


def _called_function(body: ChatCompletionRequest) -> FunctionDefinition | None:
    definitions = [tool.function for tool in body.tools or () if tool.function is not None]
    definitions += list(body.functions or ())
    if not definitions or body.messages[-1].role in ("tool", "function"):
        return None
    extra = body.model_extra or {}
    choice = extra.get("tool_choice", extra.get("function_call"))
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or choice).get("name")
        return next((d for d in definitions if d.name == name), definitions[0])
    return definitions[0]


def _logprobs(text: str, words: tuple[str, ...], top: int) -> dict[str, Any]:
    """OpenAI's `logprobs` of a choice: one entry per token-sized piece of `text`."""
    pieces = [piece if index == 0 else " " + piece
              for index, piece in enumerate(text.split(" "))] if text else []
    content = []
    for index, piece in enumerate(pieces):
        logprob = -0.01 * (index % 7 + 1)
        alternatives = [{"token": piece, "logprob": logprob, "bytes": list(piece.encode())}]
        alternatives += [{"token": " " + word, "logprob": logprob - 1 - rank,
                          "bytes": list((" " + word).encode())}
                         for rank, word in enumerate(words[: max(0, top - 1)])]
        content.append({"token": piece, "logprob": logprob, "bytes": list(piece.encode()),
                        "top_logprobs": alternatives[:top]})
    return {"content": content, "refusal": None}
