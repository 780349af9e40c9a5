"""The worker's part of a request's trace: a consumer span per record, a client span per
provider call with OpenTelemetry's GenAI attributes, and the log fields of both.

The client span is named `{operation} {model}` (`chat gpt-4o-mini`) as the GenAI
semantic conventions name them, and carries what a call cost and how it ended
(`gen_ai.usage.*`, `gen_ai.response.finish_reasons`), never what was said: prompts and
answers stay out of spans, whatever the tenant stores (workers/ledger/content.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from broker.config import DeploymentConfig
from broker.errors import ProviderError
from broker.kafka import Record
from broker.telemetry.logs import log_scope
from broker.telemetry.tracing import consumer_span, enabled, tracer
from schemas import ChatCompletion, EmbeddingRequest, InferenceRequest
from workers.providers import ProviderResponse

# Our provider kinds as the GenAI conventions' `gen_ai.provider.name` values.
GENAI_PROVIDER_NAMES = {"openai": "openai", "azure-openai": "azure.ai.openai",
                        "anthropic": "anthropic", "gemini": "gcp.gemini"}


async def traced_handling(record: Record, request: InferenceRequest,
                          work: Coroutine[Any, Any, None]) -> None:
    """Run `work` (handling one request record) in its consumer span and log scope."""
    with log_scope(request_id=request.id, tenant=request.tenant, model=request.model), \
            consumer_span(record.topic, record.headers, {
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "sluice.request_id": request.id, "sluice.tenant": request.tenant,
                "sluice.attempt": request.attempt}):
        await work


async def traced_call(call: Awaitable[ProviderResponse], request: InferenceRequest,
                      deployment: str, config: DeploymentConfig) -> ProviderResponse:
    """Await one provider call (`call`) inside its GenAI client span."""
    with log_scope(deployment=deployment):
        if not enabled():
            return await call
        operation = "embeddings" if isinstance(request.body, EmbeddingRequest) else "chat"
        with tracer().start_as_current_span(
                f"{operation} {config.model}", kind=SpanKind.CLIENT,
                attributes=_request_attributes(operation, request, deployment, config),
                record_exception=False, set_status_on_exception=False) as span:
            try:
                response = await call
            except BaseException as exc:
                _failed(span, exc)
                raise
            span.set_attributes(_response_attributes(response))
            return response


def _request_attributes(operation: str, request: InferenceRequest, deployment: str,
                        config: DeploymentConfig) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": GENAI_PROVIDER_NAMES.get(config.provider, config.provider),
        "gen_ai.request.model": config.model,
        "sluice.model": request.model,
        "sluice.deployment": deployment,
        "sluice.request_id": request.id,
    }
    endpoint = urlsplit(config.endpoint() or "")
    if endpoint.hostname:
        attributes["server.address"] = endpoint.hostname
        attributes["server.port"] = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return attributes


def _response_attributes(response: ProviderResponse) -> dict[str, AttributeValue]:
    completion = response.completion
    attributes: dict[str, AttributeValue] = {"gen_ai.response.model": completion.model}
    if response.provider_request_id:
        attributes["sluice.provider_request_id"] = response.provider_request_id
    if isinstance(completion, ChatCompletion):
        attributes["gen_ai.response.id"] = completion.id
        attributes["gen_ai.response.finish_reasons"] = [
            choice.finish_reason for choice in completion.choices if choice.finish_reason]
        if completion.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = completion.usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = completion.usage.completion_tokens
    elif completion.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = completion.usage.prompt_tokens
    return attributes


def _failed(span: Span, exc: BaseException) -> None:
    # The error's class (and HTTP status): its message may quote the provider's words,
    # which can echo the prompt, so it stays out of the span.
    status = exc.status_code if isinstance(exc, ProviderError) else None
    span.set_attribute("error.type", str(status) if status else type(exc).__name__)
    span.set_status(StatusCode.ERROR)
