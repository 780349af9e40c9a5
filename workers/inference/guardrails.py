"""Guardrails in the worker: screen each request just before its provider call, and its answer.

Why here and not at ingress: every lane ends in a worker (sync and async HTTP, batch lines,
Kafka-native producers that never meet ingress), so screening where the call is made is the
one place nothing can leave for a provider unscreened. The policies are the model's (from
the configuration, so a Kafka-native producer cannot drop them) and then those the request
carries (`InferenceRequest.guardrails`, which ingress sets from the model and the API key).

`RequestGuard.run` wraps one delivery: a blocked prompt ends `failed` with
`guardrail_blocked` and no call; otherwise the masked request is answered, output rules and
restoring act on the answer, and the decisions ride on the final result for the ledger. The
placeholder → value mapping lives in the `Screening` object of this delivery only; a retry
is re-queued with the caller's own body and screened afresh when it comes back (so the
masked copy is never what waits in Kafka, and restoring still works after a retry).

Streamed answers: placeholders are restored chunk by chunk (`guarded_emitter`, which finds
the delivery's screening through a context variable set for the call). Output rules act on
the final result (the answer polled, delivered by webhook and stored); chunks already sent
to a streaming caller cannot be taken back, so answers that must pass output rules should
not be streamed.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from broker.guardrails import Guardrails, Screening
from broker.guardrails.masking import StreamRestorer
from schemas import ChatCompletion, ErrorInfo, InferenceRequest, RequestStatus
from workers.inference.streaming import StreamEmitter

if TYPE_CHECKING:  # the processor's types; it imports this module, not the reverse
    from broker.config import SluiceConfig
    from workers.inference.processor import Outcome

_SCREENING: ContextVar[tuple[Screening, dict[int, StreamRestorer]] | None] = ContextVar(
    "sluice_guardrail_screening", default=None)


class RequestGuard:
    """Applies the configured guardrail policies around one delivery of a request.

    Args:
        config: the configuration (`guardrails` policies, each model's `guardrails`).
    """

    def __init__(self, config: SluiceConfig) -> None:
        self._config = config
        self._guardrails = Guardrails(config.guardrails)

    def policy_names(self, request: InferenceRequest) -> list[str]:
        """The model's policies, then the request's own, each once."""
        model = self._config.models.get(request.model)
        own = model.guardrails if model is not None else []
        return list(dict.fromkeys([*own, *(request.guardrails or ())]))

    async def run(
        self,
        request: InferenceRequest,
        answer: Callable[[InferenceRequest], Awaitable[Outcome]],
        refuse: Callable[[InferenceRequest, ErrorInfo], Outcome],
    ) -> Outcome:
        """`answer` the screened request, or `refuse` it; the outcome carries the decisions."""
        names = self.policy_names(request)
        if not names:
            return await answer(request)
        screening = self._guardrails.screen(request.body, names)
        if screening.blocked is not None:
            return _decided(refuse(request, screening.blocked), screening)
        screened = request
        if screening.body is not request.body:
            screened = request.model_copy(update={"body": screening.body})
        token = _SCREENING.set((screening, {}))
        try:
            outcome = await answer(screened)
        finally:
            _SCREENING.reset(token)
        return _finished(request, screening, outcome)


def _finished(original: InferenceRequest, screening: Screening, outcome: Outcome) -> Outcome:
    """The outcome with its answer screened and restored, and the decisions attached."""
    if outcome.retry is not None:  # re-queued as the caller sent it: screened again later
        retry = outcome.retry
        outcome = replace(outcome, retry=replace(
            retry, request=retry.request.model_copy(update={"body": original.body})))
    result = outcome.result
    if result is None:
        return outcome
    completion = result.completion
    if result.status is RequestStatus.SUCCEEDED and isinstance(completion, ChatCompletion) \
            and screening.changed:
        choices = []
        for choice in completion.choices:
            text = choice.message.content
            if text is None:
                choices.append(choice)
                continue
            screened = screening.screen_answer(text)
            if screened is None:  # an output rule blocks the answer: the call is still billed
                assert screening.blocked is not None
                result = result.model_copy(update={"status": RequestStatus.FAILED,
                                                   "completion": None,
                                                   "error": screening.blocked})
                return _decided(replace(outcome, result=result), screening)
            message = choice.message.model_copy(update={"content": screened})
            choices.append(choice.model_copy(update={"message": message}))
        result = result.model_copy(
            update={"completion": completion.model_copy(update={"choices": choices})})
        outcome = replace(outcome, result=result)
    return _decided(outcome, screening)


def _decided(outcome: Outcome, screening: Screening) -> Outcome:
    if outcome.result is None or not screening.decisions:
        return outcome
    result = outcome.result.model_copy(update={"guardrails": list(screening.decisions)})
    return replace(outcome, result=result)


def guarded_emitter(emit: StreamEmitter | None) -> StreamEmitter | None:
    """`emit`, restoring placeholders in the chunks of requests whose policies restore."""
    if emit is None:
        return None
    inner = emit

    async def restoring(request: InferenceRequest, sequence: int, chunk: dict[str, Any]) -> None:
        current = _SCREENING.get()
        if current is None or not current[0].originals:
            await inner(request, sequence, chunk)
            return
        await inner(request, sequence, restore_chunk(chunk, *current))

    return restoring


def restore_chunk(chunk: dict[str, Any], screening: Screening,
                  restorers: dict[int, StreamRestorer]) -> dict[str, Any]:
    """A copy of `chunk` with placeholders in its text deltas restored; a choice's held-back
    text goes out with its `finish_reason`."""
    choices = chunk.get("choices")
    if not choices:
        return chunk
    chunk = copy.deepcopy(chunk)  # the provider's own dict is counted for billing as sent
    for choice in chunk["choices"]:
        index = int(choice.get("index") or 0)
        delta = choice.get("delta") or {}
        restorer = restorers.get(index)
        if restorer is None:
            restorer = restorers[index] = StreamRestorer(screening.originals)
        if isinstance(delta.get("content"), str):
            delta["content"] = restorer.feed(delta["content"])
        if choice.get("finish_reason") is not None:
            held = restorer.flush()
            if held:
                delta["content"] = (delta.get("content") or "") + held
                choice["delta"] = delta
    return chunk
