"""How every Kafka client of a process authenticates and encrypts: TLS and SASL settings.

One function turns `KafkaSettings` into the keyword arguments aiokafka's producer, consumer
and admin client share, so no client can be built without them (`broker.kafka.clients`
builds every client sluicegate uses). A broker that requires SASL refuses a client that
forgot it only at its first request, with an error that does not say why; applying the
settings in one place is what makes "every client" true.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed
from aiokafka.helpers import create_ssl_context

from broker.settings import KafkaSettings


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The TLS context of SSL and SASL_SSL connections.

    Brokers are verified against `kafka_ssl_cafile` (the system's CAs without one); a
    client certificate is presented when `kafka_ssl_certfile` is set (mutual TLS).
    """
    password = settings.kafka_ssl_key_password
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        password=password.get_secret_value() if password is not None else None,
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def client_security(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for `AIOKafkaProducer`, `AIOKafkaConsumer` and the admin client."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password is not None else None,
        )
    return options


def describe(settings: KafkaSettings) -> str:
    """Who this process is to Kafka, for error messages (never the password)."""
    if settings.kafka_security_protocol.startswith("SASL_"):
        return (f"{settings.kafka_bootstrap} as SASL user '{settings.kafka_sasl_username}' "
                f"({settings.kafka_sasl_mechanism}, {settings.kafka_security_protocol})")
    return f"{settings.kafka_bootstrap} ({settings.kafka_security_protocol})"


async def login_refused(settings: KafkaSettings) -> str | None:
    """The brokers' reason for refusing our SASL login, or None if they did not refuse it.

    aiokafka logs that reason but raises only "Unable to bootstrap", which reads like a
    broker that is down; one direct connection to the first bootstrap address gets the
    reason back, so the error a process stops with can say "wrong password".
    """
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return None
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    try:
        connection = await create_conn(
            host, int(port), request_timeout_ms=int(settings.publish_timeout_s * 1000),
            **client_security(settings))
    except SaslAuthenticationFailed as exc:
        return str(exc)
    except (KafkaError, OSError, ValueError):
        return None  # unreachable, or not a login problem: the caller's error stands
    with contextlib.suppress(Exception):
        connection.close()
    return None
