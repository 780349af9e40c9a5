"""Upstream batch result lines (OpenAI's output/error files, Anthropic's results) into our
final results and usage events. Fixtures follow the providers' documented line formats."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas import ChatCompletion, RequestStatus
from workers.batches.native.answers import (
    LineContext,
    final_messages,
    openai_answer,
    unanswered,
)
from workers.batches.native.anthropic_batches import anthropic_answer

COMPLETION = {
    "id": "chatcmpl-abc", "object": "chat.completion", "created": 1711652795,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 22, "completion_tokens": 2, "total_tokens": 24,
              "prompt_tokens_details": {"cached_tokens": 10}}}
CONTEXT = LineContext(request_id="batch_req_x_1", model="gpt-4o-mini", tenant="acme",
                      api_key_id="key_1", batch_id="batch_x", deployment="openai-native",
                      provider="openai", created_at=datetime(2026, 1, 1, tzinfo=UTC),
                      submitted_at=datetime(2026, 1, 1, 0, 1, tzinfo=UTC))


def test_an_openai_output_line_succeeds_and_is_billed_as_batch() -> None:
    answer = openai_answer({"id": "batch_req_123", "custom_id": "batch_req_x_1", "error": None,
                            "response": {"status_code": 200, "request_id": "req_123",
                                         "body": COMPLETION}})
    assert answer is not None and answer.status is RequestStatus.SUCCEEDED
    assert answer.provider_request_id == "req_123"
    result, usage = final_messages(CONTEXT, answer)
    assert result.status is RequestStatus.SUCCEEDED and result.correlation_id == "batch_x"
    assert isinstance(result.completion, ChatCompletion)
    assert usage is not None
    assert (usage.service_tier, usage.input_tokens, usage.output_tokens,
            usage.cached_input_tokens) == ("batch", 22, 2, 10)
    # The same line published again is the same event: the ledger keeps one row.
    assert final_messages(CONTEXT, answer)[1].event_id == usage.event_id  # type: ignore[union-attr]


def test_an_openai_error_line_fails_without_usage() -> None:
    answer = openai_answer({"id": "batch_req_456", "custom_id": "batch_req_x_1", "error": None,
                            "response": {"status_code": 400, "request_id": "req_456", "body": {
                                "error": {"message": "Invalid 'messages'.", "param": "messages",
                                          "type": "invalid_request_error", "code": None}}}})
    assert answer is not None and answer.status is RequestStatus.FAILED
    assert answer.error is not None and answer.error.type == "invalid_request_error"
    result, usage = final_messages(CONTEXT, answer)
    assert result.error == answer.error and usage is None


@pytest.mark.parametrize(("code", "status"), [("batch_expired", RequestStatus.EXPIRED),
                                              ("batch_cancelled", RequestStatus.CANCELLED)])
def test_openai_lines_that_never_ran(code: str, status: RequestStatus) -> None:
    answer = openai_answer({"id": "batch_req_789", "custom_id": "batch_req_x_1",
                            "response": None, "error": {"code": code, "message": "..."}})
    assert answer is not None and answer.status is status
    assert final_messages(CONTEXT, answer)[1] is None


def test_an_anthropic_succeeded_result_is_a_chat_completion() -> None:
    answer = anthropic_answer({"custom_id": "batch_req_x_1", "result": {
        "type": "succeeded", "message": {
            "id": "msg_014VwiXbi91y3JMjcpyGBHX5", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "Hello!"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 36}}}})
    assert answer is not None and answer.status is RequestStatus.SUCCEEDED
    assert isinstance(answer.completion, ChatCompletion)
    assert answer.completion.choices[0].message.content == "Hello!"
    assert answer.provider_request_id == "msg_014VwiXbi91y3JMjcpyGBHX5"


@pytest.mark.parametrize(("result", "status"), [
    ({"type": "errored", "error": {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: Field required"}}},
     RequestStatus.FAILED),
    ({"type": "canceled"}, RequestStatus.CANCELLED),
    ({"type": "expired"}, RequestStatus.EXPIRED),
])
def test_anthropic_results_that_did_not_succeed(result: dict[str, object],
                                                status: RequestStatus) -> None:
    answer = anthropic_answer({"custom_id": "batch_req_x_1", "result": result})
    assert answer is not None and answer.status is status
    if status is RequestStatus.FAILED:
        assert answer.error is not None and answer.error.type == "invalid_request_error"
        assert answer.error.message == "max_tokens: Field required"


@pytest.mark.parametrize(("outcome", "batch_status", "status"), [
    ("completed", "expired", RequestStatus.EXPIRED),   # our batch expired first
    ("expired", "in_progress", RequestStatus.EXPIRED),
    ("cancelled", "cancelling", RequestStatus.CANCELLED),
    (None, "cancelled", RequestStatus.CANCELLED),      # never sent
    ("failed", "in_progress", RequestStatus.FAILED),
])
def test_lines_the_upstream_never_answered(outcome: str | None, batch_status: str,
                                           status: RequestStatus) -> None:
    answer = unanswered("batch_req_x_1", outcome, batch_status,  # type: ignore[arg-type]
                        "line 1: bad url")
    assert answer.status is status
    if status is RequestStatus.FAILED:
        assert answer.error is not None and "bad url" in answer.error.message


def test_lines_that_are_not_results_are_skipped() -> None:
    assert openai_answer({"no": "custom id"}) is None
    assert anthropic_answer(["not", "an", "object"]) is None
