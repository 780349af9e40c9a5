"""What the ledger makes of guardrails: event rows without the data, masked stored prompts."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.kafka import ConsumerRecord, encode
from broker.stores.guardrail_events import GuardrailEvent, events_of_results
from schemas import (
    ChatCompletionRequest,
    ChatMessage,
    ErrorInfo,
    InferenceRequest,
    InferenceResult,
    RequestStatus,
    Topics,
)
from schemas.guardrails import GuardrailDecision
from workers.ledger.rows import Kind, plan_batch, prompt_json, result_row

NOW = datetime(2030, 1, 1, tzinfo=UTC)
EMAIL = "jane.doe@example.com"
TOPICS = Topics("sluice.")


def _record(topic: str, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, 0, 0, 0, b"k", value, None, 1, len(value), ())


def test_decisions_become_event_rows() -> None:
    result = InferenceResult(
        request_id="req_1", model="m", status=RequestStatus.FAILED, tenant="acme",
        error=ErrorInfo(type="invalid_request_error", code="guardrail_blocked", message="x"),
        created_at=NOW, finished_at=NOW, guardrails=[
            GuardrailDecision(policy="p", rule="email", action="masked", stage="input", count=2),
            GuardrailDecision(policy="p", rule="card", action="blocked", stage="input")])
    assert events_of_results([result_row(result)]) == [
        GuardrailEvent("req_1", "acme", "m", "p", "email", "masked", "input", 2),
        GuardrailEvent("req_1", "acme", "m", "p", "card", "blocked", "input", 1)]
    plain = result.model_copy(update={"guardrails": None})
    assert events_of_results([result_row(plain)]) == []


def _request(**fields: object) -> InferenceRequest:
    body = ChatCompletionRequest(model="m", messages=[
        ChatMessage(role="user", content=f"I am {EMAIL}")])
    return InferenceRequest.model_validate({"id": "req_1", "model": "m", "body": body,
                                            "created_at": NOW, **fields})


def test_a_screened_requests_prompt_is_masked_for_storage() -> None:
    topic = TOPICS.requests("m")
    screened = plan_batch(TOPICS, [_record(topic, encode(_request(guardrails=["p"])))])
    prompt = screened.rows[Kind.REQUEST][0].prompt
    assert prompt is not None and EMAIL not in str(prompt_json(prompt))
    assert prompt_json(prompt) == [{"role": "user", "content": "I am <EMAIL_1>"}]
    plain = plan_batch(TOPICS, [_record(topic, encode(_request()))])
    stored = plain.rows[Kind.REQUEST][0].prompt
    assert stored is not None and prompt_json(stored)[0]["content"] == f"I am {EMAIL}"
