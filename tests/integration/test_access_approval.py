"""Access approval end to end: a model that requires approval, driven by the openai SDK.

A key's calls answer 403 (`access_required`, then `access_pending` once it asked, then
`access_denied` after a denial) until an admin approves; each step lands in `access_audit`;
an approval for one tenant opens nothing for another.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from broker.config import SluiceConfig, parse_config
from broker.settings import IngressSettings, KafkaSettings
from broker.signing import key_headers, key_signing_secret
from broker.stores.access import AccessStore
from broker.stores.keys import create_api_key
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack
from tests.integration.test_provenance import _read

pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

ADMIN_KEY = "sk-admin-access-tests-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL = "gpt-4o-mini"


def _config() -> SluiceConfig:
    return parse_config({
        "models": {MODEL: {"deployments": ["sim"], "requires_approval": True},
                   "open-model": {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "openai", "base_url": f"{SIM_BASE}/v1",
                                "model": "gpt-4o-mini", "input_usd_per_mtok": "0.15",
                                "output_usd_per_mtok": "0.60"}},
    })


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, database_url: str) -> AsyncIterator[Stack]:
    ingress = IngressSettings(sync_timeout_s=20, admin_key=ADMIN_KEY)
    async with running_stack(kafka_settings, database_url, config=_config(),
                             ingress=ingress) as running:
        yield running


async def _refusal(client: openai.AsyncOpenAI, model: str = MODEL) -> tuple[int, Any]:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}])
    return caught.value.status_code, caught.value.code


async def _answer(client: openai.AsyncOpenAI) -> str:
    completion = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}])
    return completion.choices[0].message.content or ""


async def test_request_approve_deny_and_audit(stack: Stack) -> None:
    client = stack.openai()
    async with client:
        assert await _refusal(client) == (403, "access_required")
        # A model without `requires_approval` is not gated.
        assert (await client.chat.completions.create(
            model="open-model", messages=[{"role": "user", "content": "hi"}])).choices

        # The key asks for itself.
        asked = await stack.client.post("/v1/access/requests", headers=stack.auth, json={
            "resource": f"model:{MODEL}", "reason": "summaries for support"})
        assert asked.status_code == 200, asked.text
        grant = asked.json()
        assert grant["status"] == "pending" and grant["tenant"] == "acme"
        assert await _refusal(client) == (403, "access_pending")

        # Anthropic's door refuses in Anthropic's envelope.
        messages = await stack.client.post("/v1/messages", headers=stack.auth, json={
            "model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
        assert messages.status_code == 403
        assert messages.json()["type"] == "error"
        assert messages.json()["error"]["type"] == "permission_error"

        # A tenant key cannot decide; the admin lists it as pending and approves.
        forbidden = await stack.client.post(f"/v1/admin/access/{grant['id']}/approve",
                                            headers=stack.auth)
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "insufficient_role"
        pending = await stack.client.get("/v1/admin/access?pending=true", headers=ADMIN)
        assert [item["id"] for item in pending.json()["data"]] == [grant["id"]]
        approved = await stack.client.post(f"/v1/admin/access/{grant['id']}/approve",
                                           headers=ADMIN, json={"reason": "ok by legal"})
        assert approved.status_code == 200 and approved.json()["status"] == "approved"
        assert await _answer(client)
        again = await stack.client.post(f"/v1/admin/access/{grant['id']}/approve",
                                        headers=ADMIN)
        assert again.status_code == 400
        assert again.json()["error"]["code"] == "invalid_access_transition"

        denied = await stack.client.post(f"/v1/admin/access/{grant['id']}/deny",
                                         headers=ADMIN, json={"reason": "contract ended"})
        assert denied.json()["status"] == "denied"
        assert await _refusal(client) == (403, "access_denied")

    async with stack.engine.connect() as connection:
        audit = (await connection.execute(text(
            "SELECT action, actor, reason, key_id, resource FROM access_audit "
            "WHERE grant_id = :id ORDER BY id"), {"id": grant["id"]})).all()
    key_id = grant["key_id"]
    assert [tuple(row) for row in audit] == [
        ("requested", key_id, "summaries for support", key_id, f"model:{MODEL}"),
        ("approved", "admin", "ok by legal", key_id, f"model:{MODEL}"),
        ("denied", "admin", "contract ended", key_id, f"model:{MODEL}"),
    ]
    # Append-only: the database itself refuses to rewrite history.
    with pytest.raises(DBAPIError, match="append-only"):
        async with stack.engine.begin() as connection:
            await connection.execute(text("UPDATE access_audit SET reason = 'x'"))


async def test_an_approval_for_one_tenant_opens_nothing_for_another(stack: Stack) -> None:
    other_secret, _ = await create_api_key(stack.engine, "globex")
    second_acme_secret, _ = await create_api_key(stack.engine, "acme")
    # The admin grants the whole tenant acme (no key): every acme key may call.
    made = await stack.client.post("/v1/admin/access", headers=ADMIN, json={
        "resource": f"model:{MODEL}", "tenant": "acme", "reason": "pilot"})
    assert made.status_code == 200, made.text
    assert made.json()["key_id"] is None
    await stack.client.post(f"/v1/admin/access/{made.json()['id']}/approve", headers=ADMIN)

    async with stack.openai() as acme, stack.openai(second_acme_secret) as acme_too, \
            stack.openai(other_secret) as globex:
        assert await _answer(acme)
        assert await _answer(acme_too)
        assert await _refusal(globex) == (403, "access_required")
        # globex asks: pending for globex, and it sees only its own requests.
        await stack.client.post("/v1/access/requests", json={
            "resource": f"model:{MODEL}", "reason": "we want it too", "scope": "tenant"},
            headers={"Authorization": f"Bearer {other_secret}"})
        assert await _refusal(globex) == (403, "access_pending")
        listed = await stack.client.get("/v1/access/requests",
                                        headers={"Authorization": f"Bearer {other_secret}"})
        assert [item["tenant"] for item in listed.json()["data"]] == ["globex"]
        assert await _answer(acme)  # acme's approval untouched


async def test_kafka_native_requests_need_approval_too(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    kafka = kafka_settings.model_copy(update={"kafka_trust_unsigned": False})
    assert kafka.kafka_signing_key is not None
    replies_topic = f"{kafka.topic_prefix}tenant.acme.access"
    async with running_stack(kafka, database_url, config=_config()) as stack:
        _, unapproved = await create_api_key(stack.engine, "acme")
        _, approved = await create_api_key(stack.engine, "acme")
        store = AccessStore(stack.engine)
        grant = await store.request("acme", f"model:{MODEL}", key_id=approved.id,
                                    reason="batch scoring", actor="admin")
        await store.decide(grant.id, "approved", actor="admin")
        ids = {}
        producer = AIOKafkaProducer(bootstrap_servers=kafka.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for key in (unapproved, approved):
                request_id = ids[key.id] = f"native-{uuid.uuid4().hex}"
                payload = json.dumps({
                    "id": request_id, "model": MODEL, "tenant": "acme",
                    "created_at": datetime.now(UTC).isoformat(), "reply_to": replies_topic,
                    "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                }).encode()
                secret = key_signing_secret(kafka.kafka_signing_key, key.id)
                await producer.send_and_wait(f"{kafka.topic_prefix}requests.{MODEL}", payload,
                                             key=request_id.encode(),
                                             headers=key_headers(key.id, secret, payload))
        finally:
            await producer.stop()
        replies = await _read(kafka.kafka_bootstrap, replies_topic, set(ids.values()),
                              by="request_id")
    refused = replies[ids[unapproved.id]][0]
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "access_required"
    assert replies[ids[approved.id]][0]["status"] == "succeeded"


async def test_batch_lines_reach_a_gated_model_only_once_approved(stack: Stack) -> None:
    line = json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}})

    async def allowed_models() -> list[str]:
        client = stack.openai()
        async with client:
            file = await client.files.create(file=("lines.jsonl", line.encode()),
                                             purpose="batch")
            batch = await client.batches.create(input_file_id=file.id,
                                                endpoint="/v1/chat/completions",
                                                completion_window="24h")
        return list(await stack.scalar("SELECT models FROM batches WHERE id = :id",
                                       id=batch.id))

    # Not approved: the batch may not use the gated model (its lines answer as unknown).
    assert await allowed_models() == ["open-model"]
    asked = await stack.client.post("/v1/access/requests", headers=stack.auth, json={
        "resource": f"model:{MODEL}", "reason": "nightly batch"})
    await stack.client.post(f"/v1/admin/access/{asked.json()['id']}/approve", headers=ADMIN)
    assert await allowed_models() == [MODEL, "open-model"]


async def test_a_denied_caller_gets_no_cached_answer_either(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    data = _config().model_dump(mode="json", exclude_none=True)
    data["models"][MODEL]["cache"] = {"ttl_s": 600}
    ingress = IngressSettings(sync_timeout_s=20, admin_key=ADMIN_KEY)
    async with running_stack(kafka_settings, database_url, config=parse_config(data),
                             ingress=ingress) as stack:
        asked = await stack.client.post("/v1/access/requests", headers=stack.auth, json={
            "resource": f"model:{MODEL}", "reason": "cached answers"})
        grant = asked.json()["id"]
        await stack.client.post(f"/v1/admin/access/{grant}/approve", headers=ADMIN)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "cache me"}]}

        async def hit() -> bool:
            response = await stack.client.post("/v1/chat/completions", headers=stack.auth,
                                               json=body)
            return response.headers.get("x-sluice-cache") == "hit"

        assert not await hit()  # answered by the provider, kept by the ledger
        await eventually(hit)  # then answered from the cache
        await stack.client.post(f"/v1/admin/access/{grant}/deny", headers=ADMIN)
        refused = await stack.client.post("/v1/chat/completions", headers=stack.auth,
                                          json=body)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "access_denied"
