"""Request provenance rules, without Kafka: signatures, keys, tenants, models, reply topics."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from pydantic import SecretStr

from broker.errors import ConfigError, UnprovenRequest
from broker.kafka import encode
from broker.settings import KafkaSettings
from broker.signing import (
    SERVICE_SIGNER,
    is_valid,
    key_headers,
    key_signing_secret,
    service_headers,
)
from broker.stores.keys import ApiKeyRecord, KeyLimits
from schemas import InferenceRequest
from workers.inference.provenance import RequestProvenance
from workers.inference.retries import RetryScheduler

SIGNING_KEY = SecretStr("k" * 40)
HELLO = {"role": "user", "content": "hi"}
KAFKA = KafkaSettings(kafka_signing_key=SIGNING_KEY, topic_prefix="p.")
KEY = ApiKeyRecord(id="key_1", tenant="billing", name=None, prefix="sk-sluice-ab12",
                   created_at=datetime.now(UTC), revoked_at=None,
                   limits=KeyLimits(models=frozenset({"m"})))


class _Keys:
    async def get(self, key_id: str) -> ApiKeyRecord | None:
        return KEY if key_id == KEY.id else None


def _request(**fields: Any) -> InferenceRequest:
    values: dict[str, Any] = {"id": "r1", "model": "m", "tenant": "billing",
                              "created_at": datetime.now(UTC),
                              "body": {"model": "m", "messages": [HELLO]}}
    return InferenceRequest.model_validate(values | fields)


def _record(request: InferenceRequest, headers: list[tuple[str, bytes]] | None = None,
            payload: bytes | None = None) -> ConsumerRecord[bytes, bytes]:
    value = payload if payload is not None else encode(request)
    return ConsumerRecord(topic="p.requests.m", partition=0, offset=0, timestamp=0,
                          timestamp_type=0, key=b"r1", value=value, checksum=None,
                          serialized_key_size=2, serialized_value_size=len(value),
                          headers=tuple(headers or ()))


def _signed_by_key(request: InferenceRequest,
                   key_id: str = KEY.id) -> ConsumerRecord[bytes, bytes]:
    payload = encode(request)
    secret = key_signing_secret(SIGNING_KEY, key_id)
    return _record(request, key_headers(key_id, secret, payload), payload)


async def test_a_key_signed_request_is_served_as_its_key() -> None:
    request = _request(reply_to="p.tenant.billing.replies")
    served = await RequestProvenance(KAFKA, _Keys()).verify(_signed_by_key(request), request)
    assert served.api_key_id == KEY.id
    assert served.tenant == "billing"


async def test_a_reply_topic_in_the_header_is_checked_and_moved_into_the_body() -> None:
    request = _request()
    payload = encode(request)
    headers = [*key_headers(KEY.id, key_signing_secret(SIGNING_KEY, KEY.id), payload),
               ("reply_to", b"p.replies.ingress-1")]
    provenance = RequestProvenance(KAFKA, _Keys())
    with pytest.raises(UnprovenRequest, match=r"may not name reply_to 'p\.replies\.ingress-1'"):
        await provenance.verify(_record(request, headers, payload), request)
    headers[-1] = ("reply_to", b"p.tenant.billing.x")
    served = await provenance.verify(_record(request, headers, payload), request)
    assert served.reply_to == "p.tenant.billing.x"


@pytest.mark.parametrize(("fields", "key_id", "reason"), [
    ({"tenant": "acme"}, KEY.id, "names tenant 'acme'"),
    ({"model": "other", "body": {"model": "other", "messages": [HELLO]}}, KEY.id,
     "may not use model 'other'"),
    ({"api_key_id": "key_2"}, KEY.id, "names api_key_id 'key_2'"),
    ({"reply_to": "p.tenant.billing-corp.x"}, KEY.id, "may not name reply_to"),
    ({}, "key_unknown", "unknown, revoked or expired"),
])
async def test_a_key_may_not_ask_for_more_than_it_allows(
    fields: dict[str, Any], key_id: str, reason: str
) -> None:
    request = _request(**fields)
    with pytest.raises(UnprovenRequest, match=reason):
        await RequestProvenance(KAFKA, _Keys()).verify(_signed_by_key(request, key_id), request)


async def test_unsigned_and_forged_requests_are_refused() -> None:
    request = _request(tenant="anyone")
    provenance = RequestProvenance(KAFKA, _Keys())
    with pytest.raises(UnprovenRequest, match="unsigned request"):
        await provenance.verify(_record(request), request)
    altered = _request(tenant="acme")  # the signed bytes were billing's
    signed = _signed_by_key(_request())
    forged = _record(altered, list(signed.headers), encode(altered))
    with pytest.raises(UnprovenRequest, match="does not match"):
        await provenance.verify(forged, altered)


async def test_service_signed_requests_are_served_as_they_are() -> None:
    request = _request(tenant="acme", api_key_id="key_9", reply_to="p.replies.i1")
    payload = encode(request)
    record = _record(request, service_headers(KAFKA, payload), payload)
    assert await RequestProvenance(KAFKA).verify(record, request) == request
    # ...but a reply_to header they did not put in the body is not theirs.
    bare = _request(tenant="acme")
    payload = encode(bare)
    record = _record(bare, [*service_headers(KAFKA, payload), ("reply_to", b"p.x")], payload)
    with pytest.raises(UnprovenRequest, match="reply_to header"):
        await RequestProvenance(KAFKA).verify(record, bare)


async def test_trusting_unsigned_keeps_todays_behaviour_but_not_for_bad_signatures() -> None:
    trusting = RequestProvenance(KafkaSettings(kafka_trust_unsigned=True))
    request = _request(tenant="anyone")
    assert await trusting.verify(_record(request), request) == request
    with pytest.raises(UnprovenRequest):
        await trusting.verify(_signed_by_key(request), request)


def test_a_worker_that_can_verify_nothing_does_not_start() -> None:
    with pytest.raises(ConfigError, match="SLUICE_KAFKA_SIGNING_KEY"):
        RequestProvenance(KafkaSettings())
    RequestProvenance(KafkaSettings(kafka_bootstrap="memory://unit"))  # in-process: closed


def test_a_released_retry_is_signed_by_the_services() -> None:
    # The retry is the re-encoded request: the client's signature no longer matches it.
    retried = _request(attempt=1)
    signed = _signed_by_key(_request())
    record = _record(retried, [*signed.headers, ("x-sluice-not-before", b"0")],
                     encode(retried))
    scheduler = RetryScheduler(KAFKA.model_copy(update={"kafka_bootstrap": "memory://r"}),
                               None, None, [])  # type: ignore[arg-type]
    headers = dict(scheduler._signed(record))
    assert headers["x-sluice-key-id"] == SERVICE_SIGNER.encode()
    assert is_valid(KAFKA, SERVICE_SIGNER, encode(retried),
                    headers["x-sluice-signature"].decode())


async def test_a_producer_cannot_drop_its_keys_guardrails_or_bring_a_cache_ticket() -> None:
    guarded = replace(KEY, limits=replace(KEY.limits, guardrails=("pii",)))

    class Keys:
        async def get(self, key_id: str) -> ApiKeyRecord | None:
            return guarded if key_id == KEY.id else None

    request = _request(guardrails=["extra"],
                       cache={"key": "a" * 64, "ttl_s": 60})
    served = await RequestProvenance(KAFKA, Keys()).verify(_signed_by_key(request), request)
    assert served.guardrails == ["pii", "extra"]
    assert served.cache is None  # tickets are ingress's to issue


async def test_an_analyst_key_may_not_call_models_through_kafka() -> None:
    analyst = replace(KEY, limits=replace(KEY.limits, role="analyst"))

    class Keys:
        async def get(self, key_id: str) -> ApiKeyRecord | None:
            return analyst if key_id == KEY.id else None

    request = _request()
    with pytest.raises(UnprovenRequest, match="analyst"):
        await RequestProvenance(KAFKA, Keys()).verify(_signed_by_key(request), request)
