"""Standard Webhooks signing, checked against the reference `standardwebhooks` package."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from broker.errors import InvalidRequest
from broker.webhooks.signing import (
    generate_secret,
    secret_key,
    signature,
    signature_header,
    webhook_headers,
)

# A fixed vector: secret bytes 0..31, a fixed id, timestamp and body.
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'


def test_signature_matches_the_reference_implementation() -> None:
    expected = Webhook(SECRET).sign(MSG_ID, datetime.fromtimestamp(TIMESTAMP, UTC), BODY.decode())
    assert signature(SECRET, MSG_ID, TIMESTAMP, BODY) == expected


def test_headers_verify_with_the_reference_implementation() -> None:
    now = int(datetime.now(UTC).timestamp())
    headers = webhook_headers([SECRET], MSG_ID, now, BODY)
    assert Webhook(SECRET).verify(BODY, headers) == {"test": 2432232314}
    assert headers["webhook-id"] == MSG_ID and headers["webhook-timestamp"] == str(now)


def test_rotation_signs_with_every_active_secret() -> None:
    old, new = generate_secret(), generate_secret()
    now = int(datetime.now(UTC).timestamp())
    headers = webhook_headers([new, old], MSG_ID, now, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):  # receivers on either secret accept it
        Webhook(secret).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_tampered_body_fails_verification() -> None:
    now = int(datetime.now(UTC).timestamp())
    headers = webhook_headers([SECRET], MSG_ID, now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"test": 1}', headers)


def test_generated_secrets_have_the_standard_form() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_") and len(secret_key(secret)) == 32
    assert len(secret_key(generate_secret(24))) == 24
    assert len(secret_key(generate_secret(64))) == 64
    assert generate_secret() != secret
    with pytest.raises(ValueError):
        generate_secret(16)


SHORT = "whsec_" + base64.b64encode(b"x" * 8).decode()


@pytest.mark.parametrize("bad", ["nope", "whsec_!!!", SHORT])
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        secret_key(bad)


def test_unsigned_delivery_is_impossible() -> None:
    with pytest.raises(ValueError):
        signature_header([], MSG_ID, TIMESTAMP, BODY)
