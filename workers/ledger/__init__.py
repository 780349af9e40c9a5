"""The ledger: records usage, requests and final results from Kafka in PostgreSQL, once each.

`Ledger` is the service (on `broker.kafka.ApplyLoop`); `rows` holds its pure helpers
(decoding, deduplication) and `store` its idempotent SQL. Privacy: `content` stores prompts only for
tenants with `store_content`, and `ContentRetention` (run beside the ledger) removes other
tenants' completion text once it is past retention; `StaleHolds` releases admission holds of
requests that can no longer finish.
"""

from workers.ledger.holds import StaleHolds
from workers.ledger.retention import ContentRetention
from workers.ledger.rows import (
    Kind,
    LedgerBatch,
    LedgerRow,
    Poison,
    classify,
    plan_batch,
    subscription_pattern,
)
from workers.ledger.service import Ledger
from workers.ledger.store import write_batch

__all__ = [
    "ContentRetention",
    "Kind",
    "Ledger",
    "LedgerBatch",
    "LedgerRow",
    "Poison",
    "StaleHolds",
    "classify",
    "plan_batch",
    "subscription_pattern",
    "write_batch",
]
