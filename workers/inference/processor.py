"""Turn one `InferenceRequest` into its final result and the usage it consumed.

No Kafka here: the pool feeds requests in and publishes what comes out, so this logic is
tested with in-process providers and a fake clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from broker.config import SluiceConfig
from broker.errors import ProviderRejected, ProviderRetriable
from schemas import ErrorInfo, InferenceRequest, InferenceResult, RequestStatus, UsageEvent
from workers.providers import Provider, ProviderResponse

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing a request produced: one final result, one usage event per billed call."""

    result: InferenceResult
    usage: list[UsageEvent] = field(default_factory=list)


class RequestProcessor:
    """Calls a model's deployments in order until one answers or all have failed."""

    def __init__(
        self,
        config: SluiceConfig,
        providers: Mapping[str, Provider],
        clock: Clock = utc_now,
    ):
        self._config = config
        self._providers = providers
        self._clock = clock

    async def process(self, request: InferenceRequest) -> Outcome:
        """Answer `request`; never raises for provider failures (they become results)."""
        if request.deadline is not None and self._clock() >= request.deadline:
            return self._expired(request, 0, "before a provider was called")
        last_error: ProviderRetriable | None = None
        attempts = 0
        for deployment_name, deployment in self._config.deployment_chain(request.model):
            timeout_s = deployment.timeout_s
            if request.deadline is not None:
                remaining = (request.deadline - self._clock()).total_seconds()
                if remaining <= 0:
                    break
                timeout_s = min(timeout_s, remaining)
            provider = self._providers[deployment_name]
            attempts += 1
            started = self._clock()
            try:
                response = await provider.complete(request.body, timeout_s=timeout_s)
            except ProviderRetriable as exc:
                last_error = exc
                continue
            except ProviderRejected as exc:
                return Outcome(self._final(
                    request,
                    RequestStatus.FAILED,
                    error=ErrorInfo(
                        type="invalid_request_error",
                        code=f"provider_{exc.status_code}" if exc.status_code else None,
                        message=str(exc),
                    ),
                    deployment=deployment_name,
                    provider=provider.name,
                    attempts=attempts,
                ))
            usage = self._usage(request, deployment_name, provider, response, started, attempts)
            result = self._final(
                request,
                RequestStatus.SUCCEEDED,
                response=response,
                deployment=deployment_name,
                provider=provider.name,
                attempts=attempts,
            )
            return Outcome(result, [usage])
        if last_error is None and request.deadline is not None:
            return self._expired(request, attempts, "while providers were failing")
        detail = str(last_error) if last_error else "no deployment could be called"
        return Outcome(self._final(
            request,
            RequestStatus.FAILED,
            attempts=attempts,
            error=ErrorInfo(
                type="upstream_error",
                code="providers_unavailable",
                message=f"Every deployment of '{request.model}' failed; last error: {detail}",
            ),
        ))

    def _expired(self, request: InferenceRequest, attempts: int, when: str) -> Outcome:
        error = ErrorInfo(
            type="deadline_exceeded",
            code="expired",
            message=f"The request's deadline passed {when}; it was not answered.",
        )
        return Outcome(self._final(request, RequestStatus.EXPIRED, error=error, attempts=attempts))

    def _final(
        self,
        request: InferenceRequest,
        status: RequestStatus,
        *,
        response: ProviderResponse | None = None,
        error: ErrorInfo | None = None,
        deployment: str | None = None,
        provider: str | None = None,
        attempts: int = 0,
    ) -> InferenceResult:
        return InferenceResult(
            request_id=request.id,
            model=request.model,
            status=status,
            completion=response.completion if response else None,
            error=error,
            tenant=request.tenant,
            api_key_id=request.api_key_id,
            deployment=deployment,
            provider=provider,
            attempts=attempts,
            correlation_id=request.correlation_id,
            created_at=request.created_at,
            finished_at=self._clock(),
        )

    def _usage(
        self,
        request: InferenceRequest,
        deployment_name: str,
        provider: Provider,
        response: ProviderResponse,
        started: datetime,
        attempt: int,
    ) -> UsageEvent:
        usage = response.completion.usage
        input_tokens = usage.prompt_tokens if usage else 0
        output_tokens = usage.completion_tokens if usage else 0
        deployment = self._config.deployments[deployment_name]
        return UsageEvent(
            event_id=f"use_{uuid.uuid4().hex}",
            request_id=request.id,
            tenant=request.tenant,
            api_key_id=request.api_key_id,
            model=request.model,
            deployment=deployment_name,
            provider=provider.name,
            provider_request_id=response.provider_request_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=deployment.cost_usd(input_tokens, output_tokens),
            latency_ms=response.latency_ms,
            status="succeeded",
            attempt=request.attempt + attempt - 1,
            started_at=started,
            finished_at=self._clock(),
        )
