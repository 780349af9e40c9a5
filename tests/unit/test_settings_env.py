"""Settings handed to child processes come back unchanged."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from broker.settings import IngressSettings, KafkaSettings


def test_as_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = KafkaSettings(kafka_bootstrap="10.0.0.1:9092", topic_prefix="t1.",
                          fetch_max_wait_ms=7)
    env = kafka.as_env()
    assert env["SLUICE_KAFKA_BOOTSTRAP"] == "10.0.0.1:9092"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert KafkaSettings() == kafka
    secret = "s3cret-" + "0" * 32
    ingress = IngressSettings(admin_key=secret)  # type: ignore[arg-type]
    assert ingress.as_env()["SLUICE_ADMIN_KEY"] == secret
    assert "SLUICE_PUBLIC_URL" not in ingress.as_env()  # None: left to the child's default


def test_a_weak_admin_key_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        IngressSettings(admin_key="admin")  # type: ignore[arg-type]


def test_a_webhook_attempt_must_end_within_its_lease() -> None:
    from broker.webhooks.settings import WebhookSettings

    with pytest.raises(ValidationError, match="must be shorter than SLUICE_DELIVER_LEASE_S"):
        WebhookSettings(webhook_timeout_s=60, deliver_lease_s=60)
    assert WebhookSettings(webhook_timeout_s=10, deliver_lease_s=60).webhook_timeout_s == 10

