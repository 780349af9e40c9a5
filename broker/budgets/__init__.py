"""Provider rate budgets that hold across every worker process (see algorithm.py)."""

from broker.budgets.algorithm import DIMENSIONS, BucketShape, BucketState, Vector
from broker.budgets.postgres import PostgresBudgetStore
from broker.budgets.signals import RateLimitSignal, parse_duration, parse_rate_limit_headers
from broker.budgets.store import Backoff, BudgetStore, Grant, MemoryBudgetStore

__all__ = [
    "DIMENSIONS",
    "Backoff",
    "BucketShape",
    "BucketState",
    "BudgetStore",
    "Grant",
    "MemoryBudgetStore",
    "PostgresBudgetStore",
    "RateLimitSignal",
    "Vector",
    "parse_duration",
    "parse_rate_limit_headers",
]
