"""One tenant's long polls are capped per ingress instance; other tenants are not affected."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx

from broker.batches.settings import BatchSettings
from broker.settings import IngressSettings, KafkaSettings
from broker.stores.requests import RequestRecord
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.hot_routes import serve
from ingress.services import IngressServices, Principal, StoredRequest
from schemas import Lane, RequestStatus
from tests.unit.test_pipeline_in_memory import _config


class _TwoTenants:
    async def principal(self, secret: str, *, cached_only: bool = False) -> Principal | None:
        return {"sk-a": Principal(tenant="a", api_key_id="ka"),
                "sk-b": Principal(tenant="b", api_key_id="kb")}.get(secret)


class _ForeverQueued:
    """Every request is recorded and never finishes: every long poll waits its full time."""

    async def find(self, request_id: str) -> StoredRequest | None:
        tenant = request_id.split("_")[1]
        return RequestRecord(id=request_id, tenant=tenant, api_key_id=None, model="m",
                             lane=Lane.INTERACTIVE, status=RequestStatus.QUEUED, result=None,
                             created_at=datetime.now(UTC), finished_at=None)


async def test_past_its_cap_a_tenants_poll_answers_at_once_and_others_still_wait() -> None:
    kafka = KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}")
    app = create_app(IngressServices(
        settings=IngressSettings(max_long_polls_per_tenant=2), kafka=kafka, config=_config(),
        api_keys=_TwoTenants(), requests=_ForeverQueued(), webhooks=WebhookSettings(),
        batches=BatchSettings()))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=serve(app)), base_url="http://ingress") as client:

        async def poll(tenant: str, number: int) -> float:
            started = time.monotonic()
            response = await client.get(f"/v1/requests/req_{tenant}_{number}?wait=1",
                                        headers={"Authorization": f"Bearer sk-{tenant}"})
            assert response.status_code == 200 and response.json()["status"] == "queued"
            return time.monotonic() - started

        waits = await asyncio.gather(*(poll("a", n) for n in range(5)), poll("b", 0))
    tenant_a, tenant_b = sorted(waits[:5]), waits[5]
    assert all(wait >= 0.9 for wait in tenant_a[-2:])  # its two slots waited in full
    assert all(wait < 0.5 for wait in tenant_a[:3])  # the rest answered at once
    assert tenant_b >= 0.9  # another tenant's poll is not affected
