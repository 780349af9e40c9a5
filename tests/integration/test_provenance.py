"""Kafka-native requests must prove who sent them; unproven ones go to the dead letters.

On a cluster that does not trust unsigned requests (the production default): a request
signed with its API key's signing secret is served as its key's tenant; unsigned, forged,
other-tenant, other-model and foreign-reply-topic requests are dead-lettered with a
reason; requests that came through ingress (signed by it) are served as before.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from broker.kafka import DLQ_REASON
from broker.settings import KafkaSettings
from broker.signing import key_headers, key_signing_secret
from broker.stores.keys import KeyLimits, create_api_key
from tests.integration.stack import eventually, running_stack

pytestmark = pytest.mark.integration


def _request(request_id: str, tenant: str, reply_to: str | None) -> dict[str, Any]:
    return {
        "id": request_id, "model": "gpt-4o-mini", "tenant": tenant,
        "created_at": datetime.now(UTC).isoformat(), "reply_to": reply_to,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }


async def _read(bootstrap: str, topic: str, wanted: set[str], *, by: str) -> dict[str, Any]:
    """Records of `topic` whose JSON `by` field is in `wanted` (value and headers)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"g-{uuid.uuid4().hex}")
    await consumer.start()
    found: dict[str, Any] = {}
    try:
        async with asyncio.timeout(30):
            while not wanted <= set(found):
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for record in records:
                        value = json.loads(record.value)
                        if value.get(by) in wanted:
                            found[value[by]] = (value, dict(record.headers))
    finally:
        await consumer.stop()
    return found


async def test_only_proven_requests_are_served(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    kafka = kafka_settings.model_copy(update={"kafka_trust_unsigned": False})
    signing_key = kafka.kafka_signing_key
    assert signing_key is not None
    prefix = kafka.topic_prefix
    own_replies = f"{prefix}tenant.billing.my-service"
    async with running_stack(kafka, database_url) as stack:
        _, billing = await create_api_key(stack.engine, "billing")
        _, narrow = await create_api_key(stack.engine, "billing",
                                         limits=KeyLimits(models=frozenset({"other-model"})))
        secret = key_signing_secret(signing_key, billing.id)
        ids = {name: f"{name}-{uuid.uuid4().hex}" for name in (
            "signed", "unsigned", "forged", "other_tenant", "foreign_reply", "other_model")}
        cases: dict[str, tuple[dict[str, Any], Any]] = {
            "signed": (_request(ids["signed"], "billing", own_replies), (billing.id, secret)),
            "unsigned": (_request(ids["unsigned"], "billing", own_replies), None),
            "forged": (_request(ids["forged"], "billing", own_replies),
                       (billing.id, "0" * 64)),
            # A key of billing asking to be served (and billed) as acme.
            "other_tenant": (_request(ids["other_tenant"], "acme", own_replies),
                             (billing.id, secret)),
            # Answers sent to an ingress's reply topic would reach callers waiting there.
            "foreign_reply": (_request(ids["foreign_reply"], "billing",
                                       f"{prefix}replies.some-ingress"), (billing.id, secret)),
            "other_model": (_request(ids["other_model"], "billing", own_replies),
                            (narrow.id, key_signing_secret(signing_key, narrow.id))),
        }
        producer = AIOKafkaProducer(bootstrap_servers=kafka.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for request, signer in cases.values():
                payload = json.dumps(request).encode()
                headers = key_headers(signer[0], signer[1], payload) if signer else []
                await producer.send_and_wait(f"{prefix}requests.gpt-4o-mini", payload,
                                             key=request["id"].encode(), headers=headers)
        finally:
            await producer.stop()
        # Through ingress (signed by it) as before.
        answer = await stack.client.post("/v1/chat/completions", headers=stack.auth, json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
        replies = await _read(kafka.kafka_bootstrap, own_replies, {ids["signed"]},
                              by="request_id")
        refused = {name: request_id for name, request_id in ids.items() if name != "signed"}
        dead = await _read(kafka.kafka_bootstrap, f"{prefix}dead-letter",
                           set(refused.values()), by="id")
    assert answer.status_code == 200, answer.text
    reply, _ = replies[ids["signed"]]
    assert reply["status"] == "succeeded"
    assert reply["tenant"] == "billing"
    assert reply["api_key_id"] == billing.id
    reasons = {name: dead[request_id][1][DLQ_REASON].decode()
               for name, request_id in refused.items()}
    assert "unsigned request" in reasons["unsigned"]
    assert "does not match" in reasons["forged"]
    assert "names tenant 'acme'" in reasons["other_tenant"]
    assert "may not name reply_to" in reasons["foreign_reply"]
    assert "may not use model 'gpt-4o-mini'" in reasons["other_model"]


async def test_key_signed_requests_are_held_to_the_keys_limits(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    # A key of 2 requests a minute, and a tenant with a queue cap, as at ingress.
    kafka = kafka_settings.model_copy(update={"kafka_trust_unsigned": False})
    signing_key = kafka.kafka_signing_key
    assert signing_key is not None
    replies_topic = f"{kafka.topic_prefix}tenant.billing.limits"
    async with running_stack(kafka, database_url) as stack:
        _, key = await create_api_key(stack.engine, "billing", limits=KeyLimits(rpm=2))
        secret = key_signing_secret(signing_key, key.id)
        ids = [f"limited-{n}-{uuid.uuid4().hex}" for n in range(4)]
        producer = AIOKafkaProducer(bootstrap_servers=kafka.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for request_id in ids:
                payload = json.dumps(_request(request_id, "billing", replies_topic)).encode()
                await producer.send_and_wait(f"{kafka.topic_prefix}requests.gpt-4o-mini",
                                             payload, key=request_id.encode(),
                                             headers=key_headers(key.id, secret, payload))
        finally:
            await producer.stop()
        replies = await _read(kafka.kafka_bootstrap, replies_topic, set(ids), by="request_id")
        # The refused ones never reached a provider: two requests billed, once each.
        await eventually(lambda: stack.scalar(
            "SELECT count(*) = 2 FROM usage_events WHERE api_key_id = :key", key=key.id))
    results = [replies[request_id][0] for request_id in ids]
    assert sorted(result["status"] for result in results) == [
        "failed", "failed", "succeeded", "succeeded"]
    refused = [result for result in results if result["status"] == "failed"]
    for result in refused:
        assert result["error"]["code"] == "rate_limit_exceeded"
        assert "2 requests per minute" in result["error"]["message"]


async def test_the_ledger_records_no_row_for_an_unproven_request(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    kafka = kafka_settings.model_copy(update={"kafka_trust_unsigned": False})
    signing_key = kafka.kafka_signing_key
    assert signing_key is not None
    replies_topic = f"{kafka.topic_prefix}tenant.billing.ledger"
    async with running_stack(kafka, database_url) as stack:
        _, key = await create_api_key(stack.engine, "billing")
        secret = key_signing_secret(signing_key, key.id)
        unsigned, forged, proven = (f"{name}-{uuid.uuid4().hex}"
                                    for name in ("unsigned", "forged", "proven"))
        producer = AIOKafkaProducer(bootstrap_servers=kafka.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            # One partition, in this order: once the proven request has its row, the
            # ledger has read past the other two.
            for request_id, signer in ((unsigned, None), (forged, (key.id, "0" * 64)),
                                       (proven, (key.id, secret))):
                payload = json.dumps(_request(request_id, "acme" if signer is None
                                              else "billing", replies_topic)).encode()
                headers = key_headers(signer[0], signer[1], payload) if signer else []
                await producer.send_and_wait(f"{kafka.topic_prefix}requests.gpt-4o-mini",
                                             payload, key=request_id.encode(), partition=0,
                                             headers=headers)
        finally:
            await producer.stop()
        await eventually(lambda: stack.scalar(
            "SELECT count(*) FROM requests WHERE id = :id", id=proven))
        planted = await stack.scalar(
            "SELECT count(*) FROM requests WHERE id IN (:a, :b)", a=unsigned, b=forged)
    assert planted == 0
