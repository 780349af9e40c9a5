"""Admission arithmetic and refusals with the in-memory store and a fake clock."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from broker.admission import AdmissionControl, limits_of
from broker.clock import FakeClock
from broker.config import SluiceConfig, parse_config
from broker.errors import LimitExceeded
from broker.stores.admission import (
    Budget,
    Charge,
    Limits,
    MemoryAdmissionStore,
    month_of,
    next_month,
    window_wait,
)
from broker.stores.prices import Price, PriceBook
from broker.stores.tenants import TenantSettings
from ingress.envelope import error_response
from ingress.services import Principal
from schemas import ChatCompletionRequest, InferenceRequest

AT = datetime(2026, 11, 28, 12, tzinfo=UTC)
START = 6000.0  # the start of a fixed minute, in the fake clock's seconds


def demo_config() -> SluiceConfig:
    return parse_config({
        "models": {"gpt-4o-mini": {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}},
    })


def charge(request_id: str, tokens: int = 10, usd: str = "0") -> Charge:
    return Charge(request_id, tokens, Decimal(usd), AT)


def test_window_wait_cases() -> None:
    assert window_wait(0, 0, 1, 5, 0, 60) == 0  # empty window
    assert window_wait(0, 5, 1, 5, 30, 60) == pytest.approx(30 + 60 * (1 - 4 / 5))
    # Half of the previous minute still counts: 10 * 0.5 + 0 + 1 > 5 until 0.4 of it is left.
    assert window_wait(10, 0, 1, 5, 30, 60) == pytest.approx(60 * (1 - 4 / 10) - 30)
    assert window_wait(0, 0, 11, 10, 0, 60) == -1  # bigger than the limit: never


async def test_rpm_allows_a_burst_up_to_the_limit_then_says_when() -> None:
    clock = FakeClock(START)
    store = MemoryAdmissionStore(clock)
    limits = Limits("key:k", rpm=3)
    decisions = [await store.admit(limits, charge(f"r{i}")) for i in range(4)]
    assert [d.admitted for d in decisions] == [True, True, True, False]
    assert decisions[3].refused_by == "key:k rpm"
    assert decisions[3].retry_after_s == pytest.approx(60 + 60 * (1 - 2 / 3))
    clock.now += decisions[3].retry_after_s or 0  # the suggested wait is enough
    assert (await store.admit(limits, charge("r4"))).admitted


async def test_tpm_counts_estimated_tokens_and_refuses_an_impossible_request() -> None:
    store = MemoryAdmissionStore(FakeClock(START))
    limits = Limits("key:k", tpm=100)
    assert (await store.admit(limits, charge("a", tokens=60))).admitted
    refused = await store.admit(limits, charge("b", tokens=60))
    assert (refused.admitted, refused.refused_by) == (False, "key:k tpm")
    assert (await store.admit(limits, charge("c", tokens=40))).admitted
    never = await store.admit(limits, charge("d", tokens=101))
    assert never.retry_after_s == -1


async def test_budget_holds_estimates_and_release_returns_them() -> None:
    store = MemoryAdmissionStore(FakeClock(START))
    limits = Limits("key:k", budgets=(Budget("tenant:t", usd=Decimal("1.00")),))
    admitted = [(await store.admit(limits, charge(f"r{i}", usd="0.30"))).admitted
                for i in range(4)]
    assert admitted == [True, True, True, False]  # 0.90 held; 1.20 would be over
    period = month_of(AT)
    store.spend("tenant:t", period, Decimal("0.10"), 10)  # r0 really cost 0.10
    await store.release(["r0", "r0"])  # a redelivered result releases once
    assert store.accounts[("tenant:t", period)].reserved_usd == Decimal("0.60")
    assert (await store.admit(limits, charge("r4", usd="0.30"))).admitted  # 0.10+0.60+0.30


async def test_a_used_up_budget_refuses_even_free_requests() -> None:
    store = MemoryAdmissionStore(FakeClock(START))
    limits = Limits("key:k", budgets=(Budget("key:k", usd=Decimal("0.50")),))
    store.spend("key:k", month_of(AT), Decimal("0.50"), 0)
    decision = await store.admit(limits, charge("free", usd="0"))
    assert decision.refused_by == "key:k monthly_budget_usd"


async def test_token_budget() -> None:
    store = MemoryAdmissionStore(FakeClock(START))
    limits = Limits("key:k", budgets=(Budget("key:k", tokens=100),))
    assert (await store.admit(limits, charge("a", tokens=70))).admitted
    assert (await store.admit(limits, charge("b", tokens=70))).refused_by == (
        "key:k monthly_budget_tokens")


async def test_a_refused_request_counts_nothing() -> None:
    store = MemoryAdmissionStore(FakeClock(START))
    limits = Limits("key:k", rpm=1, budgets=(Budget("tenant:t", usd=Decimal("1")),))
    assert (await store.admit(limits, charge("a", usd="0.1"))).admitted
    assert not (await store.admit(limits, charge("b", usd="0.1"))).admitted  # rpm
    assert store.accounts[("tenant:t", month_of(AT))].reserved_usd == Decimal("0.1")
    assert set(store.holds) == {"a"}


def test_periods() -> None:
    assert month_of(datetime(2026, 12, 31, 23, 30, tzinfo=UTC)) == date(2026, 12, 1)
    assert next_month(date(2026, 12, 1)) == date(2027, 1, 1)
    assert next_month(date(2026, 11, 1)) == date(2026, 12, 1)


def test_limits_of_combines_key_and_tenant() -> None:
    principal = Principal("t", "key_1", rpm=5, monthly_budget_usd=Decimal("2"))
    limits = limits_of(principal, TenantSettings("t", monthly_budget_tokens=1000))
    assert limits.rpm == 5 and limits.key_scope == "key:key_1"
    assert limits.budgets == (Budget("tenant:t", None, 1000), Budget("key:key_1", Decimal("2")))
    assert not limits_of(Principal("t", "key_2"), TenantSettings("t")).any


class Tenants:
    def __init__(self, *settings: TenantSettings) -> None:
        self.settings = {tenant.name: tenant for tenant in settings}

    async def get(self, name: str) -> TenantSettings:
        return self.settings.get(name) or TenantSettings(name)


class Prices:
    def __init__(self, *prices: Price) -> None:
        self.prices = PriceBook(prices)

    async def book(self) -> PriceBook:
        return self.prices


def price(model: str, input_usd: str, output_usd: str) -> Price:
    return Price(1, model, None, Decimal(input_usd), Decimal(output_usd), None, "USD",
                 datetime(2026, 1, 1, tzinfo=UTC))


def request(request_id: str, max_tokens: int | None = 100) -> InferenceRequest:
    body = ChatCompletionRequest.model_validate({
        "model": "gpt-4o-mini", "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Say hello to the sluice."}],
    })
    return InferenceRequest(id=request_id, model="gpt-4o-mini", body=body, tenant="t",
                            api_key_id="key_1", created_at=AT)


async def test_estimate_counts_prompt_and_max_tokens_at_the_catalog_price() -> None:
    control = AdmissionControl(MemoryAdmissionStore(), Tenants(),
                               Prices(price("gpt-4o-mini", "1000000", "2000000")), demo_config())
    tokens, usd = await control.estimate(request("r"))
    prompt = tokens - 100
    assert 10 < prompt < 30  # "Say hello to the sluice." plus the chat format overhead
    assert usd == Decimal(prompt) * 1 + Decimal(100) * 2  # $1/token in, $2/token out


async def test_unlimited_callers_are_not_counted() -> None:
    store = MemoryAdmissionStore()
    control = AdmissionControl(store, Tenants(), Prices(), demo_config())
    assert await control.admit(Principal("t", "key_1"), request("r")) is False
    assert store.windows == {} and store.holds == {}


async def test_refusals_name_the_limit_and_map_to_429() -> None:
    store = MemoryAdmissionStore(FakeClock(START))
    tenants = Tenants(TenantSettings("t", monthly_budget_usd=Decimal("200")))
    control = AdmissionControl(store, tenants, Prices(price("gpt-4o-mini", "1000000", "1000000")),
                               demo_config())
    principal = Principal("t", "key_1", rpm=10)
    assert await control.admit(principal, request("a")) is True
    with pytest.raises(LimitExceeded) as refused:
        await control.admit(principal, request("b"))  # ~$117 each: 2 x 117 > 200
    assert "monthly budget of tenant 't' ($200" in str(refused.value)
    response = error_response(refused.value)
    assert response.status_code == 429
    assert b'"code":"insufficient_quota"' in bytes(response.body)
    assert int(response.headers["retry-after"]) > 0

    rate_store = MemoryAdmissionStore(FakeClock(START))
    rate = AdmissionControl(rate_store, Tenants(), Prices(), demo_config())
    limited = Principal("t", "key_2", rpm=1)
    await rate.admit(limited, request("c"))
    with pytest.raises(LimitExceeded) as too_fast:
        await rate.admit(limited, request("d"))
    assert "Rate limit reached for API key key_2: 1 requests per minute" in str(too_fast.value)
    # The counter assumes the previous minute's requests were spread evenly, so one request
    # at the very start of a minute still weighs on the next minute until its end.
    assert error_response(too_fast.value).headers["retry-after"] == "120"
    with pytest.raises(LimitExceeded, match="more than API key key_3's limit of 50 tokens"):
        await rate.admit(Principal("t", "key_3", tpm=50), request("e"))
