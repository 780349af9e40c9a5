"""The ledger's guarantees, driven through the in-memory Kafka port (PostgreSQL stays real).

The same test functions as tests/integration/test_ledger.py, collected here with a
`kafka_settings` that names a `memory://` broker: the ledger runs on the port unchanged,
and its one-row-per-event and commit-after-the-database rules hold there too.
"""

from __future__ import annotations

import uuid

import pytest

from broker.settings import KafkaSettings
from tests.integration.test_ledger import (
    test_duplicate_usage_event_is_one_row,
    test_offsets_are_committed_only_after_the_database_commit,
)

pytestmark = pytest.mark.integration

__all__ = [
    "test_duplicate_usage_event_is_one_row",
    "test_offsets_are_committed_only_after_the_database_commit",
]


@pytest.fixture
def kafka_settings() -> KafkaSettings:
    """An in-memory broker of this test's own, instead of the session's real ones."""
    return KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}", topic_prefix="m.",
                         topic_partitions=4, fetch_max_wait_ms=10,
                         background_fetch_max_wait_ms=50)
