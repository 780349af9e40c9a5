"""Turn one `InferenceRequest` into its final result, or a retry later, and its usage.

No Kafka here: the pool feeds requests in and publishes what comes out, so this logic is
tested with in-process providers and a fake clock.

Per delivery: a cancelled request ends `cancelled`; one past its deadline (its own, or its
lane's default) ends `expired`; otherwise its deployments are tried in routing order,
skipping those whose circuit breaker is open. A rejection ends the request `failed` at once
(failing over would not help); a retriable failure moves on to the next deployment. When
every deployment failed, the request is scheduled again later (`Outcome.retry`) until its
model's retry policy is exhausted, which ends it `failed` and dead-letters it.

`InferenceRequest.attempt` counts the provider calls made for the request in earlier
deliveries, so every billed call's usage event has its own attempt number.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from broker import metrics
from broker.budgets import Vector, parse_rate_limit_headers
from broker.config import SluiceConfig
from broker.errors import (
    ProviderRejected,
    ProviderRetriable,
    StreamCancelled,
    UnsupportedParameter,
)
from broker.estimates import Estimator
from broker.tokens import encoding_for_model
from schemas import (
    EmbeddingRequest,
    ErrorInfo,
    InferenceRequest,
    InferenceResult,
    Lane,
    RequestStatus,
    UsageEvent,
)
from workers.inference.breakers import BreakerBoard
from workers.inference.cancels import CancelledIds
from workers.inference.deployment_stats import DeploymentStats, tracked
from workers.inference.guardrails import RequestGuard, guarded_emitter
from workers.inference.lanes import BudgetGates, Reservation
from workers.inference.router import Router
from workers.inference.routing import backoff_s, effective_deadline
from workers.inference.streaming import StreamEmitter, StreamProgress
from workers.inference.tracing import traced_call
from workers.providers import Provider, ProviderResponse

Clock = Callable[[], datetime]
log = logging.getLogger("sluice.worker")

FAILOVER_BUDGET_WAIT_S = 0.5
"""How long a request waits for the budget of a deployment that has fallbacks after it."""


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Retry:
    """Deliver `request` (its attempt count advanced) again once `due`."""

    request: InferenceRequest
    due: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one delivery produced: a final result or a retry, and one usage per billed call.

    `dead_letter_reason` is set when the final result ends a request that exhausted its
    retries: the message is parked in the dead-letter topic too, for operators.
    """

    result: InferenceResult | None
    usage: list[UsageEvent] = field(default_factory=list)
    retry: Retry | None = None
    dead_letter_reason: str | None = None


class RequestProcessor:
    """Routes a request over its model's deployments until one answers or all have failed."""

    def __init__(
        self,
        config: SluiceConfig,
        providers: Mapping[str, Provider],
        clock: Clock = utc_now,
        *,
        breakers: BreakerBoard | None = None,
        cancelled: CancelledIds | None = None,
        rng: random.Random | None = None,
        budgets: BudgetGates | None = None,
        emit: StreamEmitter | None = None,
    ):
        self._config = config
        self._estimator = Estimator(config)
        # Calls in flight and latency per deployment, for the routing strategies.
        self.stats = DeploymentStats()
        self._providers = tracked(providers, self.stats)
        self._clock = clock
        self.breakers = breakers or BreakerBoard(config.circuit_breaker, config.deployments)
        self.cancelled = cancelled or CancelledIds()
        self._rng = rng or random.Random()
        self.router = Router(config, self.stats, self._rng, self._estimator)
        self.budgets = budgets
        # Guardrail policies around each delivery (workers/inference/guardrails.py).
        self.guard = RequestGuard(config)
        self._emit = guarded_emitter(emit)

    def refused(self, request: InferenceRequest, error: ErrorInfo) -> Outcome:
        """The final answer of a request its limits refused before any call."""
        return Outcome(self._final(request, RequestStatus.FAILED, error=error,
                                   attempts=request.attempt))

    async def process(self, request: InferenceRequest, priority: Lane | None = None) -> Outcome:
        """Answer `request` within its guardrail policies: a prompt they block is refused
        before any call; the answer passes their output rules (see `_answer`)."""
        return await self.guard.run(request, lambda screened: self._answer(screened, priority),
                                    self.refused)

    async def _answer(self, request: InferenceRequest, priority: Lane | None = None) -> Outcome:
        """Answer `request`; never raises for provider failures (they become outcomes).

        `priority`: the lane it waits in for budget, when not its own (a request moved to
        the batch topic for fair share waits there like batch work).
        """
        if self.cancelled.is_cancelled(request.id, request.tenant):
            error = ErrorInfo(type="cancelled", code="cancelled",
                              message="The request was cancelled before it started.")
            return Outcome(self._final(request, RequestStatus.CANCELLED, error=error,
                                       attempts=request.attempt))
        deadline = effective_deadline(request, self._config.deadlines)
        if self._clock() >= deadline:
            return self._expired(request, request.attempt, "before a provider was called")
        calls = 0
        last_error: ProviderRetriable | None = None
        unsupported: dict[str, UnsupportedParameter] = {}
        # Variant, strategy order and context-window rule (workers/inference/router.py).
        choice = self.router.choose(request)
        if choice.variant != request.variant:
            request = request.model_copy(update={"variant": choice.variant})
        if choice.refusal is not None:
            return Outcome(self._final(request, RequestStatus.FAILED, error=choice.refusal,
                                       attempts=request.attempt))
        order = choice.order
        for index, name in enumerate(order):
            breaker = self.breakers[name]
            if not breaker.allow():
                continue
            remaining = (deadline - self._clock()).total_seconds()
            if remaining <= 0:
                break
            # The last deployment is worth waiting for until the deadline; one with
            # fallbacks only briefly (its spare load spills over to the next).
            wait = remaining if index == len(order) - 1 else min(remaining,
                                                                 FAILOVER_BUDGET_WAIT_S)
            try:
                reservation = await self._reserve(request, name, wait, priority)
            except TimeoutError:
                continue
            if self.cancelled.is_cancelled(request.id, request.tenant):
                await self._settle(reservation, None)
                error = ErrorInfo(type="cancelled", code="cancelled",
                                  message="The request was cancelled while it waited.")
                return Outcome(self._final(request, RequestStatus.CANCELLED, error=error,
                                           attempts=request.attempt + calls))
            remaining = (deadline - self._clock()).total_seconds()
            provider = self._providers[name]
            calls += 1
            started = self._clock()
            if request.attempt + calls == 1:  # the request's first call: it queued until now
                metrics.observe_queue_wait(request.model, priority or request.lane,
                                           request.created_at, started)
            progress = StreamProgress()
            try:
                response = await traced_call(  # the `chat {model}` span (GenAI attributes)
                    self._call(request, name, provider, remaining, progress), request, name,
                    self._config.deployments[name])
            except StreamCancelled:
                breaker.record_success()
                await self._settle(reservation, reservation.costs if reservation else None)
                error = ErrorInfo(type="cancelled", code="cancelled",
                                  message="The request was cancelled while its answer streamed.")
                return self._stream_ended(request, name, provider, progress, started, calls,
                                          RequestStatus.CANCELLED, error)
            except ProviderRetriable as exc:
                breaker.record_failure()
                last_error = exc
                await self._settle(reservation, None)
                if progress.sent:  # the client has part of the answer: it cannot move now
                    error = ErrorInfo(type="upstream_error", code="stream_interrupted",
                                      message=f"The answer broke off after it began: {exc}")
                    return self._stream_ended(request, name, provider, progress, started,
                                              calls, RequestStatus.FAILED, error)
                if exc.status_code == 429 and self.budgets is not None:
                    signal = parse_rate_limit_headers(exc.rate_limit_headers)
                    if exc.retry_after_s is not None or not signal.announced:
                        signal = replace(signal, retry_after_s=exc.retry_after_s)
                    await self.budgets.observe(name, signal, rate_limited=True)
                continue
            except UnsupportedParameter as exc:
                # Refused before any call: this deployment's API cannot express the
                # request, the next one may (a cross-provider chain); no call, no bill.
                calls -= 1
                unsupported[name] = exc
                await self._settle(reservation, None)
                continue
            except ProviderRejected as exc:
                breaker.record_success()  # it answered: the deployment is healthy
                await self._settle(reservation, None)
                return Outcome(self._rejected(request, exc, name, provider, calls))
            except Exception as exc:
                # An adapter's bug: the request still gets a final answer and its budget
                # back, and the partition goes on (an escaped error would stall its offset).
                log.exception("deployment %r failed unexpectedly on request %s", name,
                              request.id)
                await self._settle(reservation, None)
                return Outcome(self._broken(request, exc, name, provider, calls))
            breaker.record_success()
            used = _used(response)
            await self._settle(reservation, used or (reservation.costs if reservation else None))
            if self.budgets is not None and response.rate_limit_headers:
                await self.budgets.observe(
                    name, parse_rate_limit_headers(response.rate_limit_headers),
                    rate_limited=False)
            attempt = request.attempt + calls - 1
            usage = self._usage(request, name, provider, response, started, attempt)
            result = self._final(
                request, RequestStatus.SUCCEEDED, response=response, deployment=name,
                provider=provider.name, attempts=request.attempt + calls,
            )
            return Outcome(result, [usage])
        if len(unsupported) == len(order):  # none can, so none will: the caller's 400
            return Outcome(self._unsupported(request, next(iter(unsupported.values())), calls))
        return self._retry_or_fail(request, calls, last_error, deadline)

    async def _call(self, request: InferenceRequest, name: str, provider: Provider,
                    remaining_s: float, progress: StreamProgress) -> ProviderResponse:
        """One provider call: whole, or streamed chunk by chunk to the waiting client."""
        timeout_s = self._config.deployments[name].timeout_s
        body = request.body
        if isinstance(body, EmbeddingRequest):
            return await provider.embed(body, timeout_s=min(timeout_s, max(remaining_s, 0.001)))
        if not body.stream:
            return await provider.complete(
                body, timeout_s=min(timeout_s, max(remaining_s, 0.001)))

        async def on_chunk(chunk: dict[str, Any]) -> None:
            if self.cancelled.is_cancelled(request.id, request.tenant):
                raise StreamCancelled
            if self._emit is not None:
                await self._emit(request, progress.sent, chunk)
            progress.add(chunk)

        # The deployment's timeout bounds each wait for a chunk; the request's deadline
        # bounds the whole answer.
        try:
            async with asyncio.timeout(max(remaining_s, 0.001)):
                return await provider.stream(body, timeout_s=timeout_s, on_chunk=on_chunk)
        except TimeoutError as exc:
            raise ProviderRetriable(f"deployment '{name}' had not finished streaming at the "
                                    "request's deadline", deployment=name) from exc

    def _stream_ended(
        self, request: InferenceRequest, name: str, provider: Provider,
        progress: StreamProgress, started: datetime, calls: int, status: RequestStatus,
        error: ErrorInfo,
    ) -> Outcome:
        """A streamed answer that stopped early: its final result, and what it cost."""
        prompt = self._estimator.for_call(request.body, request.model, name).prompt_tokens
        count = encoding_for_model(self._config.deployments[name].model,
                                   self._config.models[request.model].encoding).count
        usage = UsageEvent(
            event_id=f"use_{uuid.uuid4().hex}", request_id=request.id, tenant=request.tenant,
            api_key_id=request.api_key_id, model=request.model, deployment=name,
            provider=provider.name, input_tokens=prompt,
            output_tokens=count(progress.generated_text()),
            latency_ms=(self._clock() - started).total_seconds() * 1000,
            status="failed", attempt=request.attempt + calls - 1, started_at=started,
            finished_at=self._clock(), variant=request.variant)
        result = self._final(request, status, error=error, deployment=name,
                             provider=provider.name, attempts=request.attempt + calls)
        return Outcome(result, [usage])

    async def _reserve(self, request: InferenceRequest, name: str, wait_s: float,
                       priority: Lane | None = None) -> Reservation | None:
        """Budget for one call to `name`; raises TimeoutError after `wait_s` without it."""
        if self.budgets is None or name not in self.budgets.gates:
            return None
        async with asyncio.timeout(wait_s):
            return await self.budgets.acquire(name, self.estimate(request, name),
                                              priority or request.lane, request.tenant)

    async def _settle(self, reservation: Reservation | None, used: Vector | None) -> None:
        if self.budgets is not None:
            await self.budgets.settle(reservation, used)

    def estimate(self, request: InferenceRequest, deployment: str) -> Vector:
        """What a call reserves: one request, the counted prompt and the output cap."""
        call = self._estimator.for_call(request.body, request.model, deployment)
        return (1.0, float(call.tokens), float(call.prompt_tokens), float(call.output_tokens))

    def _retry_or_fail(
        self,
        request: InferenceRequest,
        calls: int,
        last_error: ProviderRetriable | None,
        deadline: datetime,
    ) -> Outcome:
        now = self._clock()
        if now >= deadline:
            return self._expired(request, request.attempt + calls, "while providers were failing")
        policy = self._config.models[request.model].retry
        # A delivery that called nobody (every breaker open) still counts, so even a long
        # outage ends in a bounded number of deliveries.
        attempts = request.attempt + max(calls, 1)
        reason = str(last_error) if last_error else "every deployment's circuit breaker is open"
        # Deliveries so far, estimated from calls: a long chain must not inflate the backoff.
        chain = len(self._config.models[request.model].deployments)
        delay = backoff_s(policy, -(-attempts // chain), self._rng)
        if last_error is not None and last_error.retry_after_s is not None:
            delay = max(delay, min(last_error.retry_after_s, policy.max_backoff_s))
        due = now + timedelta(seconds=delay)
        if attempts >= policy.max_attempts:
            return self._exhausted(request, attempts, f"{attempts} attempts failed", reason)
        if (due - request.created_at).total_seconds() > policy.max_total_s:
            return self._exhausted(
                request, attempts, f"no retry within {policy.max_total_s:g}s", reason
            )
        if due >= deadline:
            return self._expired(request, attempts, "before it could be tried again")
        return Outcome(None, retry=Retry(request.model_copy(update={"attempt": attempts}),
                                         due, reason))

    def _exhausted(
        self, request: InferenceRequest, attempts: int, why: str, last: str
    ) -> Outcome:
        message = f"Every deployment of '{request.model}' failed ({why}); last error: {last}"
        error = ErrorInfo(type="upstream_error", code="providers_unavailable", message=message)
        result = self._final(request, RequestStatus.FAILED, error=error, attempts=attempts)
        return Outcome(result, dead_letter_reason=f"retries exhausted: {why}; last error: {last}")

    def _rejected(
        self, request: InferenceRequest, exc: ProviderRejected, name: str, provider: Provider,
        calls: int,
    ) -> InferenceResult:
        error = ErrorInfo(
            type="invalid_request_error",
            code=f"provider_{exc.status_code}" if exc.status_code else None,
            message=str(exc),
        )
        return self._final(request, RequestStatus.FAILED, error=error, deployment=name,
                           provider=provider.name, attempts=request.attempt + calls)

    def _broken(self, request: InferenceRequest, exc: Exception, name: str,
                provider: Provider, calls: int) -> InferenceResult:
        error = ErrorInfo(type="server_error", code="adapter_error",
                          message=f"Deployment '{name}' failed unexpectedly "
                                  f"({type(exc).__name__}); the operators have the details.")
        return self._final(request, RequestStatus.FAILED, error=error, deployment=name,
                           provider=provider.name, attempts=request.attempt + calls)

    def _unsupported(self, request: InferenceRequest, exc: UnsupportedParameter,
                     calls: int) -> InferenceResult:
        """No deployment of the model can express the request (nor failed trying)."""
        error = ErrorInfo(type="invalid_request_error", code="unsupported_parameter",
                          message=f"No deployment of '{request.model}' supports this request: "
                                  f"{exc}", param=exc.param)
        return self._final(request, RequestStatus.FAILED, error=error,
                           attempts=request.attempt + calls)

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
            webhook_url=request.webhook_url,
            # The ledger keeps a succeeded answer in the response cache (README "Caching").
            cache=request.cache if status is RequestStatus.SUCCEEDED else None,
            requested_model=request.requested_model,
            variant=request.variant,
            shadow_of=request.shadow_of,
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
            cached_input_tokens=usage.cached_prompt_tokens() if usage else 0,
            cache_write_input_tokens=usage.cache_write_prompt_tokens() if usage else 0,
            cache_write_1h_input_tokens=usage.cache_write_1h_prompt_tokens() if usage else 0,
            reasoning_output_tokens=usage.reasoning_completion_tokens() if usage else 0,
            # No cost here: the ledger charges every call from the price catalog, the one
            # price source (broker/stores/prices.py), at the price in force when it finished.
            latency_ms=response.latency_ms,
            status="succeeded",
            attempt=attempt,
            started_at=started,
            finished_at=self._clock(),
            variant=request.variant,
        )


def _used(response: ProviderResponse) -> Vector | None:
    """What a successful call used, as the provider reported it (None: not reported)."""
    usage = response.completion.usage
    if usage is None:
        return None
    prompt, output = float(usage.prompt_tokens), float(usage.completion_tokens)
    return (1.0, prompt + output, prompt, output)
