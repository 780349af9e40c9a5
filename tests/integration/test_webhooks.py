"""Webhooks end to end on real Kafka and PostgreSQL, verified with `standardwebhooks`.

The receiver listens on 127.0.0.1, so these tests allowlist it (`SLUICE_WEBHOOK_ALLOW_HOSTS`
for ingress, `WebhookSettings` for the deliverer); the refusal tests run without it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from broker.settings import KafkaSettings
from broker.stores.keys import create_api_key
from broker.webhooks.settings import WebhookSettings
from tests.integration.stack import Stack, eventually, running_stack
from tests.integration.webhook_receiver import Hit, Receiver, receiver
from workers.deliver import Deliverer
from workers.deliver.sender import WebhookSender, new_client

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
FAST = WebhookSettings(
    webhook_allow_hosts="127.0.0.1", webhook_min_backoff_s=0.05, webhook_max_backoff_s=0.2,
    webhook_max_attempts=4, deliver_sweep_interval_s=0.2, webhook_timeout_s=5,
)


@asynccontextmanager
async def deliverer(
    kafka: KafkaSettings, stack: Stack, settings: WebhookSettings = FAST
) -> AsyncIterator[Deliverer]:
    """A deliverer running beside the stack until the block ends."""
    stop = asyncio.Event()
    async with new_client(settings) as client:
        running = Deliverer(kafka, settings, stack.engine, WebhookSender(client, settings))
        task = asyncio.create_task(running.run(stop))
        try:
            yield running
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def _secret(stack: Stack) -> str:
    response = await stack.client.post("/v1/webhooks/secrets", headers=stack.auth)
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


async def _submit(stack: Stack, webhook_url: str | None = None) -> str:
    headers = dict(stack.auth)
    if webhook_url:
        headers["X-Webhook-URL"] = webhook_url
    response = await stack.client.post("/v1/requests", json=CHAT, headers=headers)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["id"]
    return request_id


async def _deliveries(stack: Stack, **params: str) -> list[dict[str, Any]]:
    response = await stack.client.get("/v1/webhooks/deliveries", params=params,
                                      headers=stack.auth)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _verified(hit: Hit, secret: str) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(hit.body, hit.headers)
    return payload


@pytest.fixture
def allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")


@pytest.mark.usefixtures("allow_loopback")
async def test_flaky_receiver_gets_exactly_one_accepted_delivery(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with receiver({"/flaky": [500, 503, 200]}) as hooks, running_stack(
        kafka_settings, database_url
    ) as stack, deliverer(kafka_settings, stack):
        secret = await _secret(stack)
        request_id = await _submit(stack, hooks.url("/flaky"))
        await eventually(lambda: _async(any(h.status == 200 for h in hooks.hits)), 30)
        hits = hooks.at("/flaky")
        assert [hit.status for hit in hits] == [500, 503, 200]
        assert len({hit.headers["webhook-id"] for hit in hits}) == 1  # stable across retries
        payloads = [_verified(hit, secret) for hit in hits]
        assert payloads[-1]["type"] == "inference.succeeded"
        assert payloads[-1]["data"]["request_id"] == request_id
        assert payloads[-1]["data"]["webhook_url"] == hooks.url("/flaky")

        async def finished() -> list[dict[str, Any]]:
            rows = await _deliveries(stack, request_id=request_id)
            return rows if rows and rows[0]["state"] == "succeeded" else []

        [delivery] = await eventually(finished)
        assert delivery["id"] == hits[0].headers["webhook-id"] and delivery["attempts"] == 3
        log = delivery["attempt_log"]
        assert [(a["attempt"], a["status_code"]) for a in log] == [(1, 500), (2, 503), (3, 200)]
        assert all(a["address"] == "127.0.0.1" and a["tenant"] == "acme" for a in log)
        await asyncio.sleep(0.5)
        assert len(hooks.at("/flaky")) == 3  # nothing more once accepted

        redo = await stack.client.post(
            f"/v1/webhooks/deliveries/{delivery['id']}/redeliver", headers=stack.auth)
        assert redo.status_code == 202
        await eventually(lambda: _async(len(hooks.at("/flaky")) == 4))
        assert hooks.at("/flaky")[-1].headers["webhook-id"] == delivery["id"]
        assert _verified(hooks.at("/flaky")[-1], secret)["data"]["request_id"] == request_id


@pytest.mark.usefixtures("allow_loopback")
async def test_410_disables_a_registered_endpoint(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with receiver({"/gone": [410]}) as hooks, running_stack(
        kafka_settings, database_url
    ) as stack, deliverer(kafka_settings, stack):
        created = await stack.client.post("/v1/webhooks/endpoints", headers=stack.auth,
                                          json={"url": hooks.url("/gone")})
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]  # the tenant had none: one was made
        request_id = await _submit(stack)  # no header: registered endpoints get every result
        await eventually(lambda: _async(bool(hooks.at("/gone"))), 30)
        _verified(hooks.at("/gone")[0], secret)

        async def disabled() -> list[dict[str, Any]]:
            listed = await stack.client.get("/v1/webhooks/endpoints", headers=stack.auth)
            data: list[dict[str, Any]] = listed.json()["data"]
            return data if data[0]["disabled_at"] is not None else []

        [endpoint] = await eventually(disabled)
        assert "410" in endpoint["disabled_reason"]
        [delivery] = await _deliveries(stack, request_id=request_id)
        assert delivery["state"] == "failed" and delivery["attempts"] == 1
        refused = await stack.client.post("/v1/requests", json=CHAT, headers={
            **stack.auth, "X-Webhook-URL": hooks.url("/gone")})
        assert refused.status_code == 400 and "disabled" in refused.json()["error"]["message"]
        second = await _submit(stack)
        await eventually(lambda: _stored(stack, second))
        await asyncio.sleep(0.5)
        assert len(hooks.at("/gone")) == 1 and not await _deliveries(stack, request_id=second)


@pytest.mark.usefixtures("allow_loopback")
async def test_redirects_are_not_followed(kafka_settings: KafkaSettings, database_url: str) -> None:
    async with receiver({"/moved": [302]}) as hooks, running_stack(
        kafka_settings, database_url
    ) as stack, deliverer(kafka_settings, stack, FAST.model_copy(
            update={"webhook_max_attempts": 2})):
        await _secret(stack)
        request_id = await _submit(stack, hooks.url("/moved"))

        async def failed() -> list[dict[str, Any]]:
            rows = await _deliveries(stack, request_id=request_id)
            return rows if rows and rows[0]["state"] == "failed" else []

        [delivery] = await eventually(failed, 30)
        assert [a["status_code"] for a in delivery["attempt_log"]] == [302, 302]
        assert "not followed" in delivery["last_error"]
        assert len(hooks.at("/moved")) == 2 and not hooks.at("/redirected")


async def test_ingress_refuses_private_webhook_urls(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLUICE_WEBHOOK_ALLOW_HOSTS", raising=False)
    async with running_stack(kafka_settings, database_url) as stack:
        for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest/meta-data",
                    "http://[::1]/x", "http://10.0.0.1/x", "ftp://example.com/x"):
            response = await stack.client.post(
                "/v1/requests", json=CHAT, headers={**stack.auth, "X-Webhook-URL": url})
            assert response.status_code == 400, url
            assert response.json()["error"]["code"] == "webhook_url_refused"
        response = await stack.client.post("/v1/webhooks/endpoints", headers=stack.auth,
                                           json={"url": "http://169.254.169.254/"})
        assert response.status_code == 400


@pytest.mark.usefixtures("allow_loopback")
async def test_ingress_needs_a_secret_and_a_tenant_sees_only_its_deliveries(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        url = "http://127.0.0.1:9/hook"
        response = await stack.client.post(
            "/v1/requests", json=CHAT, headers={**stack.auth, "X-Webhook-URL": url})
        assert response.status_code == 400 and "no webhook secret" in response.text
        await _secret(stack)
        await _submit(stack, url)
        other_key, _ = await create_api_key(stack.engine, "other")
        other = {"Authorization": f"Bearer {other_key}"}
        listed = await stack.client.get("/v1/webhooks/deliveries", headers=other)
        assert listed.json()["data"] == []
        redo = await stack.client.post("/v1/webhooks/deliveries/msg_x/redeliver", headers=other)
        assert redo.status_code == 404


async def test_deliverer_refuses_private_addresses_unless_allowlisted(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results straight from Kafka (no ingress check) are checked again by the deliverer."""
    monkeypatch.setenv("SLUICE_WEBHOOK_ALLOW_HOSTS", "127.0.0.1,169.254.169.254")  # ingress
    strict = FAST.model_copy(update={"webhook_allow_hosts": ""})
    async with receiver() as hooks, running_stack(kafka_settings, database_url) as stack:
        await _secret(stack)
        async with deliverer(kafka_settings, stack, strict):
            ids = [await _submit(stack, hooks.url("/private")),
                   await _submit(stack, "http://169.254.169.254/latest/meta-data")]

            async def failed() -> list[dict[str, Any]]:
                rows = [row for request_id in ids
                        for row in await _deliveries(stack, request_id=request_id)]
                return rows if len(rows) == 2 and all(r["state"] == "failed" for r in rows) else []

            rows = await eventually(failed, 30)
        assert all(r["attempts"] == 1 and "refused" in r["last_error"] for r in rows)
        assert all(r["attempt_log"][0]["address"] is None for r in rows)
        assert not hooks.hits
        # The same delivery goes through once the receiver is allowlisted (restart resumes).
        redo = await stack.client.post(
            f"/v1/webhooks/deliveries/{rows[0]['id']}/redeliver", headers=stack.auth)
        assert redo.status_code == 202
        async with deliverer(kafka_settings, stack):
            await eventually(lambda: _async(bool(hooks.at("/private"))), 30)
        assert json.loads(hooks.hits[0].body)["data"]["request_id"] in ids


async def _async(value: bool) -> bool:
    return value


async def _stored(stack: Stack, request_id: str) -> bool:
    status = await stack.scalar("SELECT status FROM requests WHERE id = :id", id=request_id)
    return status not in (None, "queued")


__all__ = ["Receiver", "httpx"]
