"""Routing order with weights, backoff with jitter, and default deadlines per lane."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from broker.config import LaneDeadlines, ModelConfig, RetryPolicy
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest, Lane
from workers.inference.routing import backoff_s, effective_deadline, route


def test_without_weights_the_configured_order_is_the_failover_order() -> None:
    model = ModelConfig(deployments=["a", "b", "c"])
    assert route(model, random.Random(1)) == ["a", "b", "c"]


def test_weights_split_first_choices_and_unweighted_ones_are_fallbacks() -> None:
    model = ModelConfig(deployments=["a", "b", "spare"], weights={"a": 3, "b": 1})
    rng = random.Random(7)
    orders = [route(model, rng) for _ in range(4000)]
    assert all(sorted(order) == ["a", "b", "spare"] and order[-1] == "spare" for order in orders)
    first = Counter(order[0] for order in orders)
    assert 0.70 < first["a"] / 4000 < 0.80


def test_backoff_grows_with_failed_calls_is_capped_and_never_zero() -> None:
    policy = RetryPolicy(initial_backoff_s=1, max_backoff_s=10, multiplier=2)
    rng = random.Random(3)
    for calls, step in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (30, 10)]:
        delays = [backoff_s(policy, calls, rng) for _ in range(200)]
        assert all(step / 2 <= delay <= step for delay in delays)
        assert max(delays) - min(delays) > step / 4  # jittered, not synchronised


def _request(**fields: object) -> InferenceRequest:
    body = ChatCompletionRequest(model="m", messages=[ChatMessage(role="user", content="x")])
    return InferenceRequest.model_validate(
        {"id": "r", "model": "m", "body": body, "created_at": datetime(2025, 1, 1, tzinfo=UTC),
         **fields})


def test_every_request_has_a_deadline() -> None:
    defaults = LaneDeadlines(interactive_s=60, batch_s=3600)
    created = datetime(2025, 1, 1, tzinfo=UTC)
    assert effective_deadline(_request(), defaults) == created + timedelta(seconds=60)
    batch = _request(lane=Lane.BATCH)
    assert effective_deadline(batch, defaults) == created + timedelta(hours=1)
    own = created + timedelta(seconds=5)
    assert effective_deadline(_request(deadline=own), defaults) == own
