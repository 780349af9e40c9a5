"""Webhook delivery bookkeeping: a stale lease cannot overwrite, endpoints per tenant are capped."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.webhooks.tables import webhook_attempts, webhook_deliveries
from workers.deliver.policy import AttemptOutcome, Verdict
from workers.deliver.store import DeliveryStore

pytestmark = pytest.mark.integration


async def test_a_finish_after_the_lease_moved_on_is_not_recorded(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(webhook_deliveries.insert().values(
            id="wh_lease_1", request_id="req_lease", tenant="acme", url="https://r.test/h",
            event_type="request.completed", payload="{}", attempt_limit=8, max_attempts=8,
            next_attempt_at=text("now()")))
    store = DeliveryStore(engine, max_attempts=8, lease_s=30)
    first = await store.claim("wh_lease_1")
    assert first is not None
    # The first deliverer stalls past its lease; another one claims the delivery.
    async with engine.begin() as connection:
        await connection.execute(update(webhook_deliveries).where(
            webhook_deliveries.c.id == "wh_lease_1").values(
                leased_until=text("now() - interval '1 second'")))
    second = await store.claim("wh_lease_1")
    assert second is not None and second.attempt == first.attempt
    started = text("now()")
    assert await store.finish(second, AttemptOutcome(status_code=200), Verdict.SUCCEEDED,
                              0.0, started)
    # The stale holder's late answer changes nothing.
    assert not await store.finish(first, AttemptOutcome(status_code=503, error="late"),
                                  Verdict.RETRY, 5.0, started)
    async with engine.connect() as connection:
        row = (await connection.execute(select(webhook_deliveries).where(
            webhook_deliveries.c.id == "wh_lease_1"))).one()
        attempts = (await connection.execute(select(webhook_attempts.c.status_code).where(
            webhook_attempts.c.delivery_id == "wh_lease_1"))).scalars().all()
    assert (row.state, row.attempts, row.last_status_code) == ("succeeded", 1, 200)
    assert attempts == [200]


async def test_a_tenant_has_at_most_its_cap_of_endpoints(engine: AsyncEngine) -> None:
    from broker.errors import InvalidRequest
    from broker.webhooks.store import register_endpoint

    for number in range(3):
        await register_endpoint(engine, "capped", f"https://r{number}.test/h", None, limit=3)
    # The same URL again is an update, not a fourth endpoint.
    await register_endpoint(engine, "capped", "https://r0.test/h", "again", limit=3)
    with pytest.raises(InvalidRequest) as refused:
        await register_endpoint(engine, "capped", "https://r3.test/h", None, limit=3)
    assert refused.value.code == "too_many_webhook_endpoints"
    await register_endpoint(engine, "other-tenant", "https://r3.test/h", None, limit=3)
