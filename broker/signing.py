"""Signed requests: what proves, on a request topic, who published a request.

Request topics are the one place sluicegate lets producers it does not run write to, so a
worker cannot believe a message's `tenant` or `reply_to` just because it is on the topic.
A request carries two headers:

- `x-sluice-key-id`: who signed it — `sluice` for sluicegate's own services (ingress, the
  batch launcher, the retry scheduler), or the id of an API key (`key_…`) for a
  Kafka-native client;
- `x-sluice-signature`: hex HMAC-SHA256 over the exact value bytes of the record.

Every secret derives from one setting, `SLUICE_KAFKA_SIGNING_KEY`, that ingress, workers and
the ledger share: the services sign with `HMAC(signing key, "service")`, and the client of
key `key_x` with its own signing secret `HMAC(signing key, "key:key_x")` (hex, handed out by
`sluice keys signing-secret key_x`). Workers recompute either from the key id, so nothing
new is stored, a leaked key hash from PostgreSQL signs nothing, and one client's secret
cannot sign as another key or as a service. Signing the exact bytes needs no shared
canonical JSON across languages: a client signs what it sends.

Rotating the signing key rotates every client's secret (they derive from it).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from pydantic import SecretStr

from broker.settings import KafkaSettings

KEY_ID_HEADER = "x-sluice-key-id"
SIGNATURE_HEADER = "x-sluice-signature"
# Key ids are `key_…` (broker/stores/keys.py), so no key can be mistaken for the services.
SERVICE_SIGNER = "sluice"

Headers = list[tuple[str, bytes]]


def _derive(signing_key: SecretStr, label: str) -> bytes:
    return hmac.new(signing_key.get_secret_value().encode(), label.encode(),
                    hashlib.sha256).digest()


def key_signing_secret(signing_key: SecretStr, key_id: str) -> str:
    """The secret the Kafka-native client of API key `key_id` signs its requests with."""
    return _derive(signing_key, f"key:{key_id}").hex()


def signature(secret: bytes, payload: bytes) -> str:
    """Hex HMAC-SHA256 of `payload` (a record's value bytes) under `secret`."""
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def key_headers(key_id: str, key_secret: str, payload: bytes) -> Headers:
    """The headers a Kafka-native client adds to a request, given its key's signing secret.

    What any language does: `HMAC-SHA256(key=secret as ASCII bytes, msg=value bytes)`, hex.
    """
    return [(KEY_ID_HEADER, key_id.encode()),
            (SIGNATURE_HEADER, signature(key_secret.encode(), payload).encode())]


def service_headers(settings: KafkaSettings, payload: bytes) -> Headers:
    """The headers sluicegate's own services add to a request they publish (none without a
    signing key: then only workers that trust unsigned requests serve it)."""
    if settings.kafka_signing_key is None:
        return []
    secret = _derive(settings.kafka_signing_key, "service")
    return [(KEY_ID_HEADER, SERVICE_SIGNER.encode()),
            (SIGNATURE_HEADER, signature(secret, payload).encode())]


def without_signature(headers: Iterable[tuple[str, bytes]]) -> Headers:
    """`headers` minus a signature (before signing a record again, or differently)."""
    return [(k, v) for k, v in headers if k not in (KEY_ID_HEADER, SIGNATURE_HEADER)]


def is_valid(settings: KafkaSettings, signer: str, payload: bytes, claimed: str) -> bool:
    """Whether `claimed` is `signer`'s signature of `payload` (constant-time compare)."""
    if settings.kafka_signing_key is None:
        return False
    if signer == SERVICE_SIGNER:
        secret = _derive(settings.kafka_signing_key, "service")
    else:
        secret = key_signing_secret(settings.kafka_signing_key, signer).encode()
    return hmac.compare_digest(signature(secret, payload), claimed.strip().lower())
