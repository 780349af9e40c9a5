"""The brain's completion written as Gemini answers: `GenerateContentResponse`s and
embeddings.

A choice becomes a candidate (`finishReason` STOP, or MAX_TOKENS when cut short by
`maxOutputTokens`); a tool call a `functionCall` part with its `args` as an object.
`stopSequences` end the text where one begins (STOP). Streamed, the text comes a few
words per chunk; every chunk carries `usageMetadata` with the prompt's tokens, and the
last one the whole usage and the finish reasons, as Gemini streams do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from broker.tokens import encoding_for_model
from schemas import ChatCompletion, Usage
from simulator.embeddings import vector
from simulator.gemini_contents import EmbedRequest

_WORDS_PER_CHUNK = 4
_TEXT_EMBEDDING_DIMENSIONS = 768
_GEMINI_EMBEDDING_DIMENSIONS = 3072


def generate_content_response(completion: ChatCompletion, stop_sequences: Sequence[str],
                              encoding: str | None) -> tuple[dict[str, Any], Usage]:
    """The response body, and its usage in OpenAI's terms (for limits and `/stats`)."""
    count = encoding_for_model(completion.model, encoding).count
    usage = completion.usage
    prompt_tokens = usage.prompt_tokens if usage else 0
    candidate_tokens = usage.completion_tokens if usage else 0
    candidates = []
    for choice in completion.choices:
        parts: list[dict[str, Any]] = []
        finish = "MAX_TOKENS" if choice.finish_reason == "length" else "STOP"
        text = choice.message.content
        if text:
            stops = [text.index(stop) for stop in stop_sequences if stop and stop in text]
            if stops:
                cut = text[: min(stops)]
                candidate_tokens -= count(text) - count(cut)
                text, finish = cut, "STOP"
            parts.append({"text": text})
        for call in choice.message.tool_calls or ():
            if call.function is not None:
                arguments = json.loads(call.function.arguments or "{}")
                parts.append({"functionCall": {"name": call.function.name, "args": arguments}})
        candidates.append({"content": {"role": "model", "parts": parts},
                           "finishReason": finish, "index": choice.index})
    metadata: dict[str, Any] = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": candidate_tokens,
        "totalTokenCount": prompt_tokens + candidate_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
    }
    cached = usage.cached_prompt_tokens() if usage else 0
    if cached:
        metadata["cachedContentTokenCount"] = cached
    response = {"candidates": candidates, "usageMetadata": metadata,
                "modelVersion": completion.model,
                "responseId": completion.id}
    return response, Usage.model_construct(prompt_tokens=prompt_tokens,
                                           completion_tokens=candidate_tokens)


def stream_responses(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`response` as the chunks `:streamGenerateContent` sends."""
    pieces = [_pieces(candidate["content"]["parts"]) for candidate in response["candidates"]]
    chunks = max(1, *(len(parts) for parts in pieces))
    metadata = response["usageMetadata"]
    opening = {"promptTokenCount": metadata["promptTokenCount"],
               "totalTokenCount": metadata["promptTokenCount"]}
    for number in range(chunks):
        last = number == chunks - 1
        candidates = []
        for candidate, parts in zip(response["candidates"], pieces, strict=True):
            if number >= len(parts) and not last:
                continue
            entry: dict[str, Any] = {"content": {"role": "model", "parts": (
                [parts[number]] if number < len(parts) else [{"text": ""}])},
                "index": candidate["index"]}
            if last:
                entry["finishReason"] = candidate["finishReason"]
            candidates.append(entry)
        yield {"candidates": candidates, "usageMetadata": metadata if last else opening,
               "modelVersion": response["modelVersion"], "responseId": response["responseId"]}


def _pieces(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text parts split every few words (the split text joins back exactly); others whole."""
    pieces: list[dict[str, Any]] = []
    for part in parts:
        if "text" not in part:
            pieces.append(part)
            continue
        words = part["text"].split(" ")
        for start in range(0, len(words), _WORDS_PER_CHUNK):
            text = " ".join(words[start:start + _WORDS_PER_CHUNK])
            pieces.append({"text": text if start == 0 else " " + text})
    return pieces


def embedding_values(requests: Sequence[EmbedRequest], model: str,
                     encoding: str | None) -> tuple[list[list[float]], int]:
    """A deterministic vector per request (seeded by its text), and the tokens embedded."""
    count = encoding_for_model(model, encoding).count
    default = (_GEMINI_EMBEDDING_DIMENSIONS if "gemini-embedding" in model
               else _TEXT_EMBEDDING_DIMENSIONS)
    vectors = []
    tokens = 0
    for request in requests:
        text = "".join(part.text or "" for part in request.content.parts)
        tokens += count(text)
        vectors.append(vector(text, request.output_dimensionality or default))
    return vectors, tokens
