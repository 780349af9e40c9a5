"""Standard Webhooks 1.0 signatures: `whsec_` secrets and `v1,<base64 HMAC-SHA256>` entries.

The signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`. A delivery carries one
signature per active secret, space-separated, so a tenant can rotate its secret without a
window in which its receivers reject our deliveries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable

from broker.errors import InvalidRequest

SECRET_PREFIX = "whsec_"
# Standard Webhooks: secrets are 24 to 64 random bytes.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
DEFAULT_SECRET_BYTES = 32


def generate_secret(size: int = DEFAULT_SECRET_BYTES) -> str:
    """A new secret: `whsec_` plus base64 of `size` random bytes (24-64)."""
    if not MIN_SECRET_BYTES <= size <= MAX_SECRET_BYTES:
        raise ValueError(f"secret size must be {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(size)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_` secret.

    Raises:
        InvalidRequest: not a `whsec_` secret of 24-64 base64-encoded bytes.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidRequest(f"a webhook secret starts with '{SECRET_PREFIX}'", param="secret")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("a webhook secret is base64 after 'whsec_'", param="secret") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise InvalidRequest(
            f"a webhook secret holds {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes, not {len(key)}",
            param="secret",
        )
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` entry: HMAC-SHA256 of `{msg_id}.{timestamp}.{body}` under `secret`."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    active_secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes
) -> str:
    """The `webhook-signature` value: one entry per active secret, space-separated.

    Raises:
        ValueError: no secret was given (an unsigned delivery is never sent).
    """
    entries = [signature(secret, msg_id, timestamp, body) for secret in active_secrets]
    if not entries:
        raise ValueError("a webhook needs at least one active secret to be signed")
    return " ".join(entries)


def webhook_headers(
    active_secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (and the JSON content type)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(active_secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }
