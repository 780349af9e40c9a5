"""The simulated provider's brain: deterministic, token-accurate, cheap."""

from __future__ import annotations

import time

import pytest

from broker.tokens import count_chat_prompt_tokens, encoding_for_model
from schemas import ChatCompletionRequest
from simulator.answers import simulate_completion


def _request(content: str = "Tell me about queues.", /, **fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "anything", "messages": [{"role": "user", "content": content}], **fields}
    )


@pytest.mark.parametrize(
    "model", ["gpt-4o-mini", "gpt-4", "meta-llama/Llama-3.1-8B-Instruct", "qwen2.5", "mystery"]
)
@pytest.mark.parametrize("output_tokens", [1, 2, 16, 200])
def test_usage_is_token_accurate_in_the_models_encoding(model: str, output_tokens: int) -> None:
    body = _request()
    completion = simulate_completion(body, upstream_model=model, output_tokens=output_tokens)
    text = completion.choices[0].message.content or ""
    assert completion.usage is not None
    assert completion.usage.completion_tokens == output_tokens
    assert encoding_for_model(model).count(text) == output_tokens
    assert completion.usage.prompt_tokens == count_chat_prompt_tokens(body.messages, model)
    assert completion.usage.total_tokens == output_tokens + completion.usage.prompt_tokens
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == model


def test_same_prompt_same_text_other_prompt_other_text() -> None:
    first = simulate_completion(_request("a"), upstream_model="gpt-4o")
    again = simulate_completion(_request("a"), upstream_model="gpt-4o")
    other = simulate_completion(_request("b"), upstream_model="gpt-4o")
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    assert first.id != again.id
    assert first.id.startswith("chatcmpl-sim-")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_output_limit_truncates_with_finish_reason_length(field: str) -> None:
    completion = simulate_completion(_request(**{field: 5}), upstream_model="gpt-4o")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"


def test_output_limit_above_natural_length_changes_nothing() -> None:
    completion = simulate_completion(_request(max_tokens=500), upstream_model="gpt-4o")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16
    assert completion.choices[0].finish_reason == "stop"


def test_given_id_and_created_are_used() -> None:
    completion = simulate_completion(
        _request(), upstream_model="gpt-4o", request_id="chatcmpl-sim-abc", created=123
    )
    assert (completion.id, completion.created) == ("chatcmpl-sim-abc", 123)
    # model_construct skips validation; the result must still be a valid wire object.
    assert type(completion).model_validate_json(completion.model_dump_json()) == completion


def test_is_fast_enough_for_the_benchmark_path() -> None:
    body = _request()
    simulate_completion(body, upstream_model="gpt-4o-mini")  # warm the caches
    started = time.perf_counter()
    for _ in range(1000):
        simulate_completion(body, upstream_model="gpt-4o-mini")
    per_call_us = (time.perf_counter() - started) * 1000
    # 50 µs is the target; the bound is loose so a busy CI machine does not flake.
    assert per_call_us < 500
