"""The in-memory Kafka port keeps the contract sluicegate relies on (tests/kafka_contract.py)."""

from __future__ import annotations

import uuid

import pytest

from broker.settings import KafkaSettings
from tests.kafka_contract import CONTRACT, Check


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
async def test_memory_port_keeps_the_contract(check: Check) -> None:
    await check(KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}",
                              topic_prefix="m."))
