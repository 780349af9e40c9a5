"""The response cache's keys: canonical, complete, tenant-scoped; the semantic split."""

from __future__ import annotations

from typing import Any

import pytest

from broker.caching.keys import canonical_json, exact_key, semantic_parts
from schemas import ChatCompletionRequest


def chat(**fields: Any) -> ChatCompletionRequest:
    data: dict[str, Any] = {"model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": "What is a sluice?"}]}
    data.update(fields)
    return ChatCompletionRequest.model_validate(data)


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": "x"}}) == \
        b'{"a":{"c":"x","d":[1,2]},"b":1}'


def test_the_key_ignores_field_order_and_explicit_nulls() -> None:
    one = ChatCompletionRequest.model_validate_json(
        '{"temperature":0.2,"model":"gpt-4o-mini",'
        '"messages":[{"content":"What is a sluice?","role":"user"}],"max_tokens":null}')
    other = chat(temperature=0.2)
    assert exact_key("acme", one) == exact_key("acme", other)


@pytest.mark.parametrize("change", [
    {"temperature": 0.7}, {"max_tokens": 5}, {"seed": 3}, {"n": 2},
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"response_format": {"type": "json_object"}},
    {"logit_bias": {"50256": -100}},  # passed through: unknown to us, still in the key
    {"messages": [{"role": "user", "content": "What is a lock?"}]},
    {"messages": [{"role": "system", "content": "Be terse."},
                  {"role": "user", "content": "What is a sluice?"}]},
    {"model": "llama-3.1-8b"},
])
def test_every_parameter_that_can_change_the_answer_changes_the_key(
        change: dict[str, Any]) -> None:
    assert exact_key("acme", chat(**change)) != exact_key("acme", chat())


@pytest.mark.parametrize("change", [
    {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}},
    {"user": "end-user-42"}, {"store": True}, {"metadata": {"run": "7"}},
])
def test_delivery_only_fields_share_the_answer(change: dict[str, Any]) -> None:
    assert exact_key("acme", chat(**change)) == exact_key("acme", chat())


def test_tenants_and_guardrail_policies_never_share_a_key() -> None:
    assert exact_key("acme", chat()) != exact_key("globex", chat())
    assert exact_key("acme", chat(), policies=("pii",)) != exact_key("acme", chat())


def test_the_semantic_split_compares_the_last_user_turn_and_hashes_the_rest() -> None:
    history = [{"role": "system", "content": "Be terse."},
               {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello."}]
    first = semantic_parts("acme", chat(messages=[
        *history, {"role": "user", "content": "What is a sluice?"}]))
    paraphrase = semantic_parts("acme", chat(messages=[
        *history, {"role": "user", "content": "Explain what a sluice is."}]))
    assert first is not None and paraphrase is not None
    assert first.last_user_text == "What is a sluice?"
    assert first.rest_hash == paraphrase.rest_hash
    other_history = semantic_parts("acme", chat(messages=[
        {"role": "system", "content": "Be verbose."}, *history[1:],
        {"role": "user", "content": "What is a sluice?"}]))
    assert other_history is not None and other_history.rest_hash != first.rest_hash
    hotter = semantic_parts("acme", chat(temperature=1.5))
    assert hotter is not None and hotter.rest_hash != semantic_parts("acme", chat()).rest_hash  # type: ignore[union-attr]
    assert semantic_parts("globex", chat()).rest_hash != semantic_parts("acme", chat()).rest_hash  # type: ignore[union-attr]


def test_text_parts_are_joined_and_other_parts_are_not_compared() -> None:
    parts = semantic_parts("acme", chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is"}, {"type": "text", "text": "a sluice?"}]}]))
    assert parts is not None and parts.last_user_text == "What is\na sluice?"
    image = chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
    assert semantic_parts("acme", image) is None
    assert semantic_parts("acme", chat(messages=[{"role": "system", "content": "x"}])) is None
