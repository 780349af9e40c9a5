"""TLS and SASL settings reach every Kafka client sluicegate builds."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from broker.kafka import new_consumer, new_producer
from broker.kafka.security import client_security
from broker.settings import KafkaSettings


def _self_signed_ca(directory: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test CA")
    cert, key = directory / "ca.pem", directory / "ca-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=sluice-test-ca", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert


def test_sasl_ssl_settings_become_client_options(tmp_path: Path) -> None:
    ca = _self_signed_ca(tmp_path)
    settings = KafkaSettings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="worker", kafka_sasl_password=SecretStr("s3cret"),
        kafka_ssl_cafile=ca, kafka_ssl_check_hostname=False)

    options = client_security(settings)

    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "worker"
    assert options["sasl_plain_password"] == "s3cret"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert not context.check_hostname
    # The CA file was loaded: the context trusts exactly our test CA.
    assert [cert["subject"] for cert in context.get_ca_certs()] == [
        ((("commonName", "sluice-test-ca"),),)]


def test_plaintext_is_the_default_and_sends_no_credentials() -> None:
    assert client_security(KafkaSettings()) == {"security_protocol": "PLAINTEXT"}


async def test_every_client_is_built_with_the_settings() -> None:
    settings = KafkaSettings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="ledger", kafka_sasl_password=SecretStr("pw"))
    producer = new_producer(settings, client_id="p")
    consumer = new_consumer(settings, client_id="c", group_id="g")
    # Built, never started: nothing connects.
    assert producer.client._security_protocol == "SASL_PLAINTEXT"
    assert producer.client._sasl_plain_username == "ledger"
    assert consumer._client._security_protocol == "SASL_PLAINTEXT"
    assert consumer._client._sasl_mechanism == "PLAIN"
    await producer.stop()
    await consumer.stop()


def test_sasl_without_credentials_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="SLUICE_KAFKA_SASL_USERNAME"):
        KafkaSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN")
