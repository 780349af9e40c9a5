"""Provenance of requests: a worker serves only requests that prove who sent them.

Anyone allowed to write a request topic could otherwise name any `tenant` (and be billed
as it, or read its results) and any `reply_to` (another ingress's reply topic, to answer
callers waiting there). So every record on a request topic must carry a signature
(`broker.signing`: `x-sluice-key-id` and `x-sluice-signature`, HMAC-SHA256 over the exact
value bytes):

- signed by `sluice` (ingress, the batch launcher, the retry scheduler): those services
  authenticated, admitted and validated the request already; it is served as it is.
- signed by an API key (a Kafka-native client): the key must exist, be neither revoked nor
  expired, belong to the tenant the request names, allow its model (the key's model list,
  as at ingress), and allow its reply topic: a key may only name topics under
  `<prefix>tenant.<its tenant>.` (one PREFIXED ACL per tenant grants them; a per-key list
  would need a column, and a tenant's keys share its results anyway).
- unsigned: refused, unless `SLUICE_KAFKA_TRUST_UNSIGNED` says this is a closed cluster
  whose every producer is trusted (then served as today). An in-process bus (`memory://`)
  has no other producers and is trusted too. A signature that does not verify is refused
  always: it is forged or altered.

Why HMAC under secrets derived from one shared key, rather than API key secrets in headers:
headers are copied into retry and dead-letter topics and read by every consumer, so a
bearer secret there would leak to all of them; a signature proves possession without
revealing it, and verifying one costs a hash, not a database trip (the key's record is
looked up, and cached, for client-signed requests only).

Refused requests raise `UnprovenRequest` (a `PoisonMessage`): the pool dead-letters them
with the reason. A proven key-signed request then goes through the key's and its tenant's
limits like a request at ingress (`workers.inference.native_admission`). A replayed
signed record is the same request (same id): the results of record make it harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from broker.errors import ConfigError, DatabaseUnavailable, UnprovenRequest
from broker.kafka import Record, header
from broker.kafka.memory import is_memory
from broker.settings import KafkaSettings
from broker.signing import KEY_ID_HEADER, SERVICE_SIGNER, SIGNATURE_HEADER, is_valid
from broker.stores.keys import ApiKeyRecord, find_active_key
from schemas import InferenceRequest, Topics

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("sluice.worker")


class KeyLookup(Protocol):
    """Active API keys by id."""

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The key if it is active (not revoked, not expired), else None.

        Raises:
            DatabaseUnavailable: the keys cannot be read now.
        """
        ...


class PostgresKeyLookup:
    """`find_active_key` behind a small TTL cache: a revoked key is refused within `ttl_s`.

    While PostgreSQL is away a key looked up before keeps working from that lookup.
    """

    def __init__(self, engine: AsyncEngine, *, ttl_s: float = 30.0, negative_ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, ApiKeyRecord | None]] = {}

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """See `KeyLookup.get`."""
        now = self._clock()
        entry = self._entries.get(key_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        try:
            record = await find_active_key(self._engine, key_id)
        except DatabaseUnavailable:
            if entry is not None and entry[1] is not None:
                return entry[1]
            raise
        if len(self._entries) > 10_000:  # ids are bounded by real keys plus forgeries
            self._entries.clear()
        ttl = self._ttl_s if record is not None else self._negative_ttl_s
        self._entries[key_id] = (now + ttl, record)
        return record


def reply_prefix(topics: Topics, tenant: str) -> str:
    """The reply topics a Kafka-native client of `tenant` may name start with this."""
    return f"{topics.prefix}tenant.{tenant}."


class RequestProvenance:
    """Verifies the signature of each request a worker consumes (see the module).

    Args:
        kafka: the signing key, whether unsigned requests are trusted, the topic prefix.
        keys: active API keys by id; without it, client-signed requests are refused.
        lookup_timeout_s: how long to wait for the keys while PostgreSQL is away before
            refusing a client-signed request (it can be replayed from the dead letters).

    Raises:
        ConfigError: neither a signing key nor trust in unsigned requests is configured, so
            no request from another process could ever be served.
    """

    def __init__(self, kafka: KafkaSettings, keys: KeyLookup | None = None, *,
                 lookup_timeout_s: float = 30.0) -> None:
        self._kafka = kafka
        self._keys = keys
        self._topics = Topics(kafka.topic_prefix)
        self._trust_unsigned = kafka.kafka_trust_unsigned or is_memory(kafka.kafka_bootstrap)
        self._lookup_timeout_s = lookup_timeout_s
        if kafka.kafka_signing_key is None and not self._trust_unsigned:
            raise ConfigError(
                "workers verify who sent each request: set SLUICE_KAFKA_SIGNING_KEY (the "
                "same on ingress, workers and ledger), or SLUICE_KAFKA_TRUST_UNSIGNED=true "
                "on a closed cluster whose every producer is trusted")

    async def verify(self, record: Record, request: InferenceRequest) -> InferenceRequest:
        """The request to serve, or `UnprovenRequest` saying why it may not be served."""
        signer = header(record, KEY_ID_HEADER)
        claimed = header(record, SIGNATURE_HEADER)
        if signer is None and claimed is None:
            if self._trust_unsigned:
                return request
            raise UnprovenRequest(
                f"unsigned request: add headers {KEY_ID_HEADER} (your API key id) and "
                f"{SIGNATURE_HEADER} (HMAC-SHA256 of the value with the key's signing "
                "secret), or set SLUICE_KAFKA_TRUST_UNSIGNED=true on a closed cluster")
        if signer is None or claimed is None:
            raise UnprovenRequest(f"{KEY_ID_HEADER} and {SIGNATURE_HEADER} go together")
        if self._kafka.kafka_signing_key is None:
            raise UnprovenRequest("signed request, but this worker has no "
                                  "SLUICE_KAFKA_SIGNING_KEY to verify it")
        if not is_valid(self._kafka, signer, record.value or b"", claimed):
            raise UnprovenRequest(f"the signature of '{signer}' does not match the message: "
                                  "forged, altered, or signed with another secret")
        reply_header = header(record, "reply_to")
        if signer == SERVICE_SIGNER:
            # Our services put reply_to in the body and mirror it in a header; the header
            # is not signed, and without a body value the worker would use it.
            if request.reply_to is None and reply_header is not None:
                raise UnprovenRequest("unsigned reply_to header on a service-signed request")
            return request
        return await self._check_key(signer, request, request.reply_to or reply_header)

    async def _check_key(self, key_id: str, request: InferenceRequest,
                         reply_to: str | None) -> InferenceRequest:
        key = await self._key(key_id)
        if key is None:
            raise UnprovenRequest(f"key '{key_id}' is unknown, revoked or expired")
        if request.tenant != key.tenant:
            raise UnprovenRequest(f"the request names tenant '{request.tenant}', but key "
                                  f"'{key_id}' belongs to tenant '{key.tenant}'")
        if request.api_key_id not in (None, key.id):
            raise UnprovenRequest(f"the request names api_key_id '{request.api_key_id}', "
                                  f"but it is signed by '{key_id}'")
        if not key.may_use(request.model):
            raise UnprovenRequest(f"key '{key_id}' may not use model '{request.model}'")
        allowed = reply_prefix(self._topics, key.tenant)
        if reply_to is not None and not (reply_to.startswith(allowed)
                                         and len(reply_to) > len(allowed)):
            raise UnprovenRequest(f"key '{key_id}' may not name reply_to '{reply_to}'; "
                                  f"its reply topics start with '{allowed}'")
        if key.limits.role == "analyst":  # read-only: never a caller of models
            raise UnprovenRequest(f"key '{key_id}' has the role 'analyst', which may not "
                                  "call models")
        # reply_to into the body: a retry of it is signed by us, and we sign bodies only.
        # A cache ticket is ingress's alone to issue (a producer's could file its answer
        # under another request's key); the key's own guardrail policies always apply.
        guardrails = list(dict.fromkeys([*(key.limits.guardrails or ()),
                                         *(request.guardrails or ())])) or None
        return request.model_copy(update={"api_key_id": key.id, "reply_to": reply_to,
                                          "cache": None, "guardrails": guardrails})

    async def key(self, key_id: str) -> ApiKeyRecord | None:
        """The active key `key_id` (cached), waiting a while for PostgreSQL if it is away.

        Raises:
            UnprovenRequest: there is no key store, or it stayed unavailable.
        """
        return await self._key(key_id)

    async def _key(self, key_id: str) -> ApiKeyRecord | None:
        if self._keys is None:
            raise UnprovenRequest(f"signed by key '{key_id}', but this worker has no key "
                                  "store to check keys against")
        deadline = time.monotonic() + self._lookup_timeout_s
        delay = 0.5
        while True:
            try:
                return await self._keys.get(key_id)
            except DatabaseUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise UnprovenRequest(
                        f"key '{key_id}' could not be checked: {exc} (replay it from the "
                        "dead letters once PostgreSQL is back)") from exc
                log.warning("API keys unavailable (%s); checking key %s again in %.1fs",
                            exc, key_id, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
