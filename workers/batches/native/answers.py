"""From upstream result lines to our final results and usage events (pure; no I/O).

Each line of an upstream batch becomes one `InferenceResult` on `<prefix>results` (so the
batch tracker's results consumer and finalizer write our output and error files exactly as
for the queue lane) and, when it consumed tokens, one `UsageEvent` with
`service_tier="batch"` (so the ledger charges the provider's batch price). Ids are
deterministic per line: publishing a chunk's answers again after a crash changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas import (
    ChatCompletion,
    EmbeddingResponse,
    ErrorInfo,
    InferenceResult,
    RequestStatus,
    UsageEvent,
)
from workers.batches.native.upstream import Outcome, UpstreamAnswer

# OpenAI's per-line error codes for lines its batch never ran.
_NOT_RUN = {"batch_expired": RequestStatus.EXPIRED, "batch_cancelled": RequestStatus.CANCELLED}


@dataclass(frozen=True, slots=True)
class LineContext:
    """What a line's result says besides the upstream answer (from our own records)."""

    request_id: str
    model: str
    tenant: str
    api_key_id: str | None
    batch_id: str
    deployment: str
    provider: str
    created_at: datetime
    submitted_at: datetime | None


def openai_answer(data: Any) -> UpstreamAnswer | None:
    """One line of an OpenAI batch's output or error file (None: not a result line)."""
    if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
        return None
    custom_id = data["custom_id"]
    response = data.get("response")
    if isinstance(response, dict):
        body = response.get("body")
        request_id = response.get("request_id")
        if response.get("status_code") == 200 and isinstance(body, dict):
            return _succeeded(custom_id, body, request_id)
        error = json_object(json_object(body).get("error"))
        return UpstreamAnswer(custom_id, RequestStatus.FAILED, error=ErrorInfo(
            type=str(error.get("type") or "upstream_error"), code=_text(error.get("code")),
            message=str(error.get("message") or
                        f"the provider answered {response.get('status_code')}")),
            provider_request_id=_text(request_id))
    error = json_object(data.get("error"))
    code = _text(error.get("code"))
    if code in _NOT_RUN:
        return UpstreamAnswer(custom_id, _NOT_RUN[code])
    return UpstreamAnswer(custom_id, RequestStatus.FAILED, error=ErrorInfo(
        type="upstream_error", code=code,
        message=str(error.get("message") or "the provider's batch did not answer this line")))


def _succeeded(custom_id: str, body: dict[str, Any], request_id: Any) -> UpstreamAnswer:
    try:
        completion: ChatCompletion | EmbeddingResponse = (
            EmbeddingResponse.model_validate(body) if body.get("object") == "list"
            else ChatCompletion.model_validate(body))
    except ValidationError:
        return UpstreamAnswer(custom_id, RequestStatus.FAILED, error=ErrorInfo(
            type="upstream_error", code="invalid_upstream_answer",
            message="The provider's batch answered this line with a body that is not a "
                    "completion."))
    return UpstreamAnswer(custom_id, RequestStatus.SUCCEEDED, completion=completion,
                          provider_request_id=_text(request_id) or completion_id(completion))


def completion_id(completion: ChatCompletion | EmbeddingResponse) -> str | None:
    """The provider's id of an answer, where it has one."""
    return completion.id if isinstance(completion, ChatCompletion) else None


def json_object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (a provider's odd line)."""
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None


def unanswered(custom_id: str, outcome: Outcome | None, batch_status: str,
               error: str | None) -> UpstreamAnswer:
    """What a line the upstream results do not mention (or that was never sent) ends as.

    A line of a batch of ours that expired, or of an upstream batch that expired, expired;
    one of a cancelled batch was cancelled; one of an upstream batch that failed as a whole
    failed with its reason.
    """
    if batch_status == "expired" or outcome == "expired":
        return UpstreamAnswer(custom_id, RequestStatus.EXPIRED)
    if outcome == "cancelled" or batch_status in ("cancelling", "cancelled"):
        return UpstreamAnswer(custom_id, RequestStatus.CANCELLED)
    message = (f"The provider refused the batch: {error}" if error else
               "The provider's batch ended without an answer for this line.")
    return UpstreamAnswer(custom_id, RequestStatus.FAILED, error=ErrorInfo(
        type="upstream_error", code="native_batch_failed", message=message))


def final_messages(context: LineContext,
                   answer: UpstreamAnswer) -> tuple[InferenceResult, UsageEvent | None]:
    """The line's final result, and its usage event when it consumed tokens."""
    now = datetime.now(UTC)
    succeeded = answer.status is RequestStatus.SUCCEEDED
    result = InferenceResult(
        request_id=context.request_id, model=context.model, status=answer.status,
        completion=answer.completion if succeeded else None,
        error=answer.error if answer.status is RequestStatus.FAILED else None,
        tenant=context.tenant, api_key_id=context.api_key_id,
        deployment=context.deployment, provider=context.provider,
        attempts=1 if succeeded or answer.error is not None else 0,
        correlation_id=context.batch_id, created_at=context.created_at, finished_at=now)
    if not succeeded or answer.completion is None or answer.completion.usage is None:
        return result, None
    usage = answer.completion.usage
    chat = usage if isinstance(answer.completion, ChatCompletion) else None
    event = UsageEvent(
        # One per line, whichever attempt publishes it: the ledger keeps the first.
        event_id=f"use_native_{context.request_id}", request_id=context.request_id,
        tenant=context.tenant, api_key_id=context.api_key_id, model=context.model,
        deployment=context.deployment, provider=context.provider,
        provider_request_id=answer.provider_request_id,
        input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
        cached_input_tokens=chat.cached_prompt_tokens() if chat else 0,
        cache_write_input_tokens=chat.cache_write_prompt_tokens() if chat else 0,
        reasoning_output_tokens=chat.reasoning_completion_tokens() if chat else 0,
        # A batch line has no call latency of its own: the wait is the batch's (hours at
        # worst), which would swamp every latency statistic of the model.
        latency_ms=0.0, status="succeeded", service_tier="batch",
        started_at=context.submitted_at or context.created_at, finished_at=now)
    return result, event
