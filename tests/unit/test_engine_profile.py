"""The embedded-broker profile: Tansu's workarounds apply on Tansu only, never on Kafka."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from broker.kafka import DEFAULT_MESSAGE_MAX_BYTES, fits, message_limit, new_producer
from broker.kafka.fetch_pacing import FetchPacing, pacing_for
from broker.settings import KafkaSettings, WorkerSettings
from tests.integration.stack import demo_config
from workers.inference import InferencePool
from workers.inference.results import NoResultsOfRecord


def _consumer() -> SimpleNamespace:
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=20))


def test_apache_kafka_keeps_its_fetch_wait_and_tansu_is_paced() -> None:
    assert pacing_for(_consumer(), KafkaSettings()) is None  # type: ignore[arg-type]
    tansu = KafkaSettings(kafka_engine="tansu")
    assert isinstance(pacing_for(_consumer(), tansu), FetchPacing)  # type: ignore[arg-type]


@pytest.mark.parametrize(("engine", "idempotent"), [("apache", True), ("tansu", False)])
async def test_producers_are_idempotent_except_on_tansu(engine: str, idempotent: bool) -> None:
    producer = new_producer(KafkaSettings(kafka_engine=engine), client_id="t")  # type: ignore[arg-type]
    # aiokafka keeps a transaction manager exactly when idempotence is on.
    assert (producer._txn_manager is not None) is idempotent
    assert producer._max_request_size == DEFAULT_MESSAGE_MAX_BYTES
    await producer.stop()


async def test_replies_go_by_key_on_apache_kafka_and_by_slot_on_tansu() -> None:
    config = demo_config()
    pools = {
        engine: InferencePool(KafkaSettings(kafka_engine=engine, kafka_trust_unsigned=True),  # type: ignore[arg-type]
                              WorkerSettings(), config,
                              list(config.models), {}, NoResultsOfRecord())
        for engine in ("apache", "tansu")
    }
    assert pools["apache"].reply_partitions is None
    assert pools["tansu"].reply_partitions is not None
    for pool in pools.values():
        await pool.producer.stop()


def test_the_size_limit_follows_the_brokers() -> None:
    small = KafkaSettings(max_message_bytes=4096)
    assert message_limit(small) == 4096
    assert message_limit(KafkaSettings()) == DEFAULT_MESSAGE_MAX_BYTES
    assert fits(small, b"key", b"x" * 3000)
    assert not fits(small, b"key", b"x" * 4096)  # the batch header counts too
