"""The processor reserves before a call, settles with real usage, and obeys 429s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.budgets import MemoryBudgetStore
from broker.config import parse_config
from broker.errors import ProviderRetriable
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest
from simulator.answers import simulate_completion
from workers.inference.lanes import BudgetGates
from workers.inference.processor import RequestProcessor
from workers.providers import ProviderResponse

CONFIG = parse_config({
    "models": {"m": {"deployments": ["d"]}},
    "deployments": {"d": {"provider": "simulated", "model": "gpt-4o-mini", "rpm": 600,
                          "tpm": 600_000, "window_s": 1.0, "burst": 0.5}},
})


class Provider:
    name = "fake"
    deployment = "d"

    def __init__(self) -> None:
        self.fail_with_429 = False
        self.calls = 0

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float
                       ) -> ProviderResponse:
        self.calls += 1
        if self.fail_with_429:
            raise ProviderRetriable("429", status_code=429, deployment="d", retry_after_s=30)
        completion = simulate_completion(body, upstream_model="gpt-4o-mini", output_tokens=5)
        return ProviderResponse(completion, None, 1.0, {"x-ratelimit-limit-requests": "300"})


def _request() -> InferenceRequest:
    body = ChatCompletionRequest(model="m", max_tokens=100,
                                 messages=[ChatMessage(role="user", content="hello there")])
    return InferenceRequest(id="r1", model="m", body=body, created_at=datetime.now(UTC))


async def test_reserve_settle_learn_and_stop_on_429() -> None:
    store = MemoryBudgetStore()
    gates = BudgetGates(CONFIG.deployments, store)
    provider = Provider()
    processor = RequestProcessor(CONFIG, {"d": provider}, budgets=gates)
    request = _request()
    estimate = processor.estimate(request, "d")
    assert estimate[1] == estimate[2] + 100 and estimate[3] == 100
    outcome = await processor.process(request)
    assert outcome.result is not None and outcome.result.status == "succeeded"
    state = store.states["d"]
    usage = outcome.usage[0]
    assert state.used[1] == usage.input_tokens + usage.output_tokens  # settled, not estimated
    assert state.reserved == [0, 0, 0, 0] and state.leases == []
    assert state.learned[0] == 300  # the provider's header caps the configured 600

    provider.fail_with_429 = True
    outcome = await processor.process(request)
    assert outcome.retry is not None  # retried later, via the retry topic
    assert state.blocked_until > 0 and state.rate_limited == 1
    calls = provider.calls
    provider.fail_with_429 = False
    late = request.model_copy(update={"deadline": datetime.now(UTC) + timedelta(seconds=0.3)})
    outcome = await processor.process(late)  # blocked: it expires without a call
    assert provider.calls == calls and outcome.result is not None
    assert outcome.result.status == "expired"
    gates.close()


class HeaderOnly429Provider(Provider):
    """A 429 that says when through its rate-limit headers only (no retry-after)."""

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float
                       ) -> ProviderResponse:
        self.calls += 1
        raise ProviderRetriable("429", status_code=429, deployment="d", rate_limit_headers={
            "x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "7s"})


async def test_a_429s_rate_limit_headers_teach_the_budget() -> None:
    store = MemoryBudgetStore()
    gates = BudgetGates(CONFIG.deployments, store)
    processor = RequestProcessor(CONFIG, {"d": HeaderOnly429Provider()}, budgets=gates)
    before = datetime.now(UTC).timestamp()
    outcome = await processor.process(_request())
    assert outcome.retry is not None
    state = store.states["d"]
    assert state.learned[0] == 120  # the limit the 429 announced caps the configured 600
    # Blocked until the announced reset (7 s), not the 1 s default of a bare 429.
    assert state.blocked_until >= before + 6.5
    gates.close()
