"""Admission against real PostgreSQL and the real ingress: limits hold across instances."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.admission import postgres_admission
from broker.batches.settings import BatchSettings
from broker.clock import FakeClock
from broker.settings import IngressSettings, KafkaSettings, LedgerSettings
from broker.stores.admission import (
    AdmissionStore,
    Budget,
    Charge,
    Limits,
    MemoryAdmissionStore,
    PostgresAdmissionStore,
    month_of,
    window_wait,
)
from broker.stores.keys import KeyLimits, create_api_key
from broker.stores.tenants import set_tenant, tenant_weights
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.postgres import PostgresApiKeys, PostgresRequests
from ingress.services import IngressServices
from schemas import ChatCompletionRequest, InferenceRequest
from tests.integration.stack import demo_config, eventually, running_stack
from workers.ledger import StaleHolds

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 28, 12, tzinfo=UTC)
BODY = {"model": "gpt-4o-mini", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Count the locks of the sluice."}]}


async def test_window_wait_sql_matches_python(engine: AsyncEngine) -> None:
    cases = [(p, c, k, 10.0, e, 60.0) for p, c, k, e in itertools.product(
        (0.0, 4.0, 12.0), (0.0, 3.0, 9.0), (1.0, 5.0, 11.0), (0.0, 15.0, 59.0))]
    async with engine.connect() as connection:
        for case in cases:
            sql = await connection.scalar(
                text("SELECT sluice_window_wait(:p, :c, :k, :l, :e, :w)"),
                dict(zip("pckl" "ew", case, strict=True)))
            assert sql == pytest.approx(window_wait(*case)), case


async def _scenario(store: AdmissionStore, clock: FakeClock) -> list[tuple[bool, str | None]]:
    """The same sequence of admissions, releases and minutes passing, for either store."""
    limits = Limits("key:k", rpm=5, tpm=800, budgets=(
        Budget("key:k", usd=Decimal("1.00")), Budget("tenant:t", tokens=1400)))
    out = []
    for step in range(16):
        charge = Charge(f"r{step}", 100 * (1 + step % 4), Decimal("0.2"), AT)
        decision = await store.admit(limits, charge)
        out.append((decision.admitted, decision.refused_by))
        if step % 3 == 2:
            await store.release([f"r{step - 2}"])
        clock.now += 7
    return out


async def test_postgres_store_decides_like_the_fake(engine: AsyncEngine) -> None:
    memory_clock, postgres_clock = FakeClock(6000.0), FakeClock(6000.0)
    expected = await _scenario(MemoryAdmissionStore(memory_clock), memory_clock)
    got = await _scenario(PostgresAdmissionStore(engine, postgres_clock), postgres_clock)
    assert got == expected
    assert {refused for _, refused in expected} == {
        None, "key:k rpm", "key:k tpm", "key:k monthly_budget_usd"}


async def _queue_scenario(store: AdmissionStore, clock: FakeClock) -> list[tuple[bool, str | None]]:
    """A queue cap of 3 beside a key's RPM: admissions, releases, a release twice."""
    limits = Limits("key:q", rpm=6, queue_tenant="q", max_queued=3)
    out = []
    for step in range(12):
        decision = await store.admit(limits, Charge(f"q{step}", 10, Decimal(0), AT))
        out.append((decision.admitted, decision.refused_by))
        if step % 4 == 3:
            await store.release([f"q{step - 3}", f"q{step - 3}", f"q{step - 2}"])
        clock.now += 4
    return out


async def test_postgres_queue_cap_decides_like_the_fake(engine: AsyncEngine) -> None:
    memory_clock, postgres_clock = FakeClock(9000.0), FakeClock(9000.0)
    expected = await _queue_scenario(MemoryAdmissionStore(memory_clock), memory_clock)
    got = await _queue_scenario(PostgresAdmissionStore(engine, postgres_clock), postgres_clock)
    assert got == expected
    assert {refused for _, refused in expected} == {None, "tenant:q queue_full", "key:q rpm"}


def _request(request_id: str) -> InferenceRequest:
    return InferenceRequest(id=request_id, model="gpt-4o-mini", tenant="acme",
                            body=ChatCompletionRequest.model_validate(BODY),
                            api_key_id="key", created_at=datetime.now(UTC))


async def test_fifty_concurrent_requests_against_a_budget_for_ten(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url, tenant="acme") as stack:
        _, usd = await postgres_admission(stack.engine, demo_config()).estimate(_request("e"))
        await set_tenant(stack.engine, "acme", monthly_budget_usd=usd * Decimal("10.5"))
        sends = [stack.client.post("/v1/requests", json=BODY, headers=stack.auth)
                 for _ in range(50)]
        responses = await asyncio.gather(*sends)
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [202] * 10 + [429] * 40
        refusal = next(r for r in responses if r.status_code == 429)
        error = refusal.json()["error"]
        assert error["code"] == "insufficient_quota"
        assert "monthly budget of tenant 'acme'" in error["message"]
        assert int(refusal.headers["retry-after"]) > 0
        period = month_of(datetime.now(UTC))
        reserved = await stack.scalar(
            "SELECT reserved_usd FROM spend_accounts WHERE scope = 'tenant:acme' "
            "AND period = :period", period=period)
        assert reserved == usd * 10
        assert await stack.scalar("SELECT count(*) FROM spend_holds") == 10


async def test_key_rpm_holds_across_two_ingress_instances(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        secret, _ = await create_api_key(stack.engine, "acme", limits=KeyLimits(rpm=4))
        config = demo_config()
        second = create_app(IngressServices(
            settings=IngressSettings(), kafka=kafka_settings, config=config,
            api_keys=PostgresApiKeys(stack.engine), requests=PostgresRequests(stack.engine),
            webhooks=WebhookSettings(), batches=BatchSettings(),
            admission=postgres_admission(stack.engine, config),
        ))
        auth = {"Authorization": f"Bearer {secret}"}
        async with second.router.lifespan_context(second), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=second), base_url="http://ingress-2"
        ) as other:
            responses = await asyncio.gather(*(
                client.post("/v1/requests", json=BODY, headers=auth)
                for client in (stack.client, other) * 3))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [202] * 4 + [429] * 2
        refusal = next(r for r in responses if r.status_code == 429)
        assert refusal.json()["error"]["code"] == "rate_limit_exceeded"
        assert "4 requests per minute" in refusal.json()["error"]["message"]
        assert 0 < int(refusal.headers["retry-after"]) <= 120
        # A key without limits is never counted.
        free = await stack.client.post("/v1/requests", json=BODY, headers=stack.auth)
        assert free.status_code == 202
        assert await stack.scalar("SELECT count(*) FROM key_rate_windows") == 1


async def test_long_answers_without_max_tokens_never_overspend_a_budget(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    from simulator import SimulatorSettings
    from tests.integration.stack import eventually

    # Answers of 8,000 tokens unless capped; the deployment caps them at 2,000 and holds
    # exactly that. Without the cap a request held 256 output tokens and spent 8,000.
    config = demo_config(max_output_tokens=2000)
    long_answers = SimulatorSettings(output_tokens=8000)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Write a saga."}]}
    async with running_stack(kafka_settings, database_url, tenant="acme", config=config,
                             simulator=long_answers) as stack:
        request = InferenceRequest(id="e", model="gpt-4o-mini", tenant="acme",
                                   body=ChatCompletionRequest.model_validate(body),
                                   api_key_id="key", created_at=datetime.now(UTC))
        _, usd = await postgres_admission(stack.engine, config).estimate(request)
        budget = usd * Decimal("10.5")
        await set_tenant(stack.engine, "acme", monthly_budget_usd=budget)
        responses = await asyncio.gather(*(
            stack.client.post("/v1/requests", json=body, headers=stack.auth)
            for _ in range(50)))
        assert sorted(r.status_code for r in responses) == [202] * 10 + [429] * 40

        async def billed() -> tuple[int, Decimal, int] | None:
            async with stack.engine.connect() as connection:
                row = (await connection.execute(text(
                    "SELECT count(*), coalesce(sum(cost_usd), 0), max(output_tokens) "
                    "FROM usage_events WHERE tenant = 'acme'"))).one()
            return (int(row[0]), Decimal(row[1]), int(row[2])) if row[0] == 10 else None

        calls, total, longest = await eventually(billed, timeout_s=60)
    assert calls == 10
    assert longest == 2000  # the provider was told the cap
    assert total <= budget


async def test_a_tenant_queue_cap_refuses_with_queue_full_and_frees_places(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    # The budget gate holds every call after the first (one request per minute), so
    # requests stay queued until their deadline (3 s) ends them.
    config = demo_config(rpm=1, window_s=60.0)
    async with running_stack(kafka_settings, database_url, config=config) as stack:
        await set_tenant(stack.engine, "acme", max_queued_requests=5)
        headers = {**stack.auth, "X-Request-Timeout": "3"}
        responses = await asyncio.gather(*(
            stack.client.post("/v1/requests", json=BODY, headers=headers) for _ in range(8)))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [202] * 5 + [429] * 3
        refusal = next(r for r in responses if r.status_code == 429)
        error = refusal.json()["error"]
        assert error["code"] == "queue_full"
        assert "tenant 'acme' has 5 requests queued" in error["message"].lower()
        assert int(refusal.headers["retry-after"]) >= 1
        assert await stack.scalar(
            "SELECT queued FROM tenant_queues WHERE tenant = 'acme'") == 5

        # Each finished request gives its place back, once, whatever its result.
        await eventually(lambda: stack.scalar(
            "SELECT queued = 0 FROM tenant_queues WHERE tenant = 'acme'"), timeout_s=30)
        assert await stack.scalar(
            "SELECT count(*) FROM requests WHERE tenant = 'acme' AND status = 'queued'") == 0
        again = await stack.client.post("/v1/requests", json=BODY, headers=stack.auth)
        assert again.status_code == 202, again.text


async def test_holds_of_requests_that_cannot_finish_are_swept(engine: AsyncEngine) -> None:
    store = PostgresAdmissionStore(engine)
    limits = Limits("key:s", budgets=(Budget("tenant:sweep", usd=Decimal(100)),),
                    queue_tenant="sweep", max_queued=10)
    for request_id in ("sw_orphan", "sw_queued", "sw_ancient", "batch_sw"):
        assert (await store.admit(limits, Charge(request_id, 10, Decimal(1), AT))).admitted
    async with engine.begin() as connection:
        await connection.execute(text(
            "INSERT INTO requests (id, tenant, model, status, created_at) VALUES "
            "('sw_queued', 'sweep', 'm', 'queued', now()), "
            "('sw_ancient', 'sweep', 'm', 'queued', now())"))
        await connection.execute(text(
            "INSERT INTO batches (id, tenant, models, endpoint, input_file_id, "
            "completion_window, status, expires_at) VALUES ('batch_sw', 'sweep', '{m}', "
            "'/v1/chat/completions', 'file', '24h', 'in_progress', now())"))
        await connection.execute(text(
            "UPDATE spend_holds SET created_at = now() - interval '2 hours' "
            "WHERE request_id IN ('sw_orphan', 'sw_queued', 'batch_sw')"))
        await connection.execute(text(
            "UPDATE spend_holds SET created_at = now() - interval '30 hours' "
            "WHERE request_id = 'sw_ancient'"))
    released = await StaleHolds(engine, LedgerSettings()).sweep()
    assert released == 2
    held = set(await _scalars(engine, "SELECT request_id FROM spend_holds "
                               "WHERE request_id LIKE '%sw%'"))
    # A request still queued within its lifetime and a running batch keep theirs.
    assert held == {"sw_queued", "batch_sw"}
    assert await _scalar(engine, "SELECT queued FROM tenant_queues WHERE tenant = 'sweep'") == 2
    assert await _scalar(engine, "SELECT reserved_usd FROM spend_accounts "
                         "WHERE scope = 'tenant:sweep'") == Decimal(2)


async def _scalars(engine: AsyncEngine, sql: str) -> list[object]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql))).scalars())


async def _scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql))).scalar()


async def test_tenant_weights_are_stored_and_read_for_workers(engine: AsyncEngine) -> None:
    await set_tenant(engine, "weighty", weight=2.5)
    await set_tenant(engine, "ordinary")
    weights = await tenant_weights(engine)
    assert weights["weighty"] == 2.5
    assert "ordinary" not in weights  # weight 1, the default
    with pytest.raises(DBAPIError):  # a weight must be positive
        await set_tenant(engine, "weighty", weight=0.0)
