"""Which deployments a request tries, in which order, and when it is tried again.

Pure functions of the configuration and a random source, so tests pin them with a seeded
`random.Random`.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from broker.config import LaneDeadlines, ModelConfig, RetryPolicy
from schemas import InferenceRequest, Lane


def route(model: ModelConfig, rng: random.Random) -> list[str]:
    """The failover order of one request.

    Weighted deployments come first, in an order drawn by weight (weighted sampling without
    replacement: the first choice splits load by weight, the rest are its fallbacks);
    unweighted or zero-weight deployments follow in the configured order.
    """
    weighted = [(name, model.weights.get(name, 0.0)) for name in model.deployments]
    pool = [(name, weight) for name, weight in weighted if weight > 0]
    order: list[str] = []
    while pool:
        total = sum(weight for _, weight in pool)
        pick = rng.uniform(0, total)
        index = 0
        for index, (_, weight) in enumerate(pool):  # noqa: B007 - index used after the loop
            pick -= weight
            if pick <= 0:
                break
        order.append(pool.pop(index)[0])
    order += [name for name, weight in weighted if weight <= 0]
    return order


def backoff_s(policy: RetryPolicy, failed_rounds: int, rng: random.Random) -> float:
    """Delay before the next delivery, after `failed_rounds` deliveries failed.

    Equal jitter: half of the exponential step is fixed (so a retry never comes back at
    once), half is random (so failures that happened together do not retry together).
    """
    exponent = max(0, failed_rounds - 1)
    step = min(policy.max_backoff_s, policy.initial_backoff_s * policy.multiplier**exponent)
    return step / 2 + rng.uniform(0, step / 2)


def effective_deadline(request: InferenceRequest, defaults: LaneDeadlines) -> datetime:
    """The request's own deadline, or its lane's default counted from its creation."""
    if request.deadline is not None:
        return request.deadline
    seconds = defaults.batch_s if request.lane is Lane.BATCH else defaults.interactive_s
    return request.created_at + timedelta(seconds=seconds)
