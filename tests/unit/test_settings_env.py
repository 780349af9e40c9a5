"""Settings handed to child processes come back unchanged."""

from __future__ import annotations

import pytest

from broker.settings import IngressSettings, KafkaSettings


def test_as_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = KafkaSettings(kafka_bootstrap="10.0.0.1:9092", topic_prefix="t1.",
                          fetch_max_wait_ms=7)
    env = kafka.as_env()
    assert env["SLUICE_KAFKA_BOOTSTRAP"] == "10.0.0.1:9092"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert KafkaSettings() == kafka
    ingress = IngressSettings(admin_key="s3cret")  # type: ignore[arg-type]
    assert ingress.as_env()["SLUICE_ADMIN_KEY"] == "s3cret"
    assert "SLUICE_PUBLIC_URL" not in ingress.as_env()  # None: left to the child's default
