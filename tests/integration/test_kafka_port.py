"""Apache Kafka and Tansu keep the contract the in-memory port is held to (kafka_contract)."""

from __future__ import annotations

import pytest

from broker.settings import KafkaSettings
from tests.kafka_contract import CONTRACT, Check

pytestmark = [pytest.mark.integration, pytest.mark.dev_broker]


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
async def test_the_broker_keeps_the_contract(check: Check, kafka_settings: KafkaSettings) -> None:
    await check(kafka_settings)
