"""The worker's route choice: strategies, variants first, shadow copies, context windows;
and the processor recording the variant on results and usage."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from broker.config import SluiceConfig, parse_config
from broker.routing import SHADOW, SHADOW_ACCOUNT
from schemas import (
    ChatCompletionRequest,
    ChatMessage,
    InferenceRequest,
    RequestStatus,
)
from workers.inference.deployment_stats import DeploymentStats
from workers.inference.processor import RequestProcessor
from workers.inference.router import Router
from workers.providers import build_provider

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LONG = "lorem ipsum dolor sit amet " * 100  # ~500 tokens


def _config(routing: dict[str, Any] | None = None, *, deployments: list[str] | None = None,
            **extra: dict[str, Any]) -> SluiceConfig:
    names = deployments or ["x", "y", "z"]
    spec = {name: {"provider": "simulated", "model": "gpt-4o-mini", **extra.get(name, {})}
            for name in ("x", "y", "z")}
    model: dict[str, Any] = {"deployments": names}
    if routing:
        model["routing"] = routing
    return parse_config({"models": {"chat": model}, "deployments": spec})


def _request(text: str = "hi", *, user: str = "alice", max_tokens: int | None = None,
             **fields: Any) -> InferenceRequest:
    body = ChatCompletionRequest(model="chat", user=user, max_tokens=max_tokens,
                                 messages=[ChatMessage(role="user", content=text)])
    return InferenceRequest(id="req_1", model="chat", body=body, tenant="acme",
                            api_key_id="key_1", created_at=NOW, **fields)


def _router(config: SluiceConfig, stats: DeploymentStats | None = None) -> Router:
    return Router(config, stats or DeploymentStats(), random.Random(5))


def test_ordered_keeps_the_configured_order_and_no_variant() -> None:
    choice = _router(_config()).choose(_request())
    assert (choice.order, choice.variant, choice.refusal) == (["x", "y", "z"], None, None)


def test_least_busy_prefers_fewest_calls_in_flight() -> None:
    stats = DeploymentStats()
    for name, calls in (("x", 3), ("y", 1), ("z", 2)):
        for _ in range(calls):
            stats.started(name)
    router = _router(_config({"strategy": "least_busy"}), stats)
    assert router.choose(_request()).order == ["y", "z", "x"]
    stats.finished("x", None)
    stats.finished("x", None)
    stats.finished("x", None)
    assert router.choose(_request()).order == ["x", "y", "z"]


def test_lowest_latency_follows_the_moving_average() -> None:
    stats = DeploymentStats(alpha=0.5)
    stats.observe_latency("x", 400)
    stats.observe_latency("y", 100)
    stats.observe_latency("z", 250)
    router = _router(_config({"strategy": "lowest_latency"}), stats)
    assert router.choose(_request()).order == ["y", "z", "x"]
    stats.observe_latency("y", 900)  # (100 + 900) / 2 = 500: now the slowest
    assert stats.latency_ms("y") == 500
    assert router.choose(_request()).order == ["z", "x", "y"]
    fresh = _router(_config({"strategy": "lowest_latency"}), DeploymentStats())
    assert fresh.choose(_request()).order == ["x", "y", "z"]  # unmeasured: configured order


def test_cheapest_orders_by_estimated_cost_and_unpriced_last() -> None:
    config = _config({"strategy": "cheapest"},
                     x={"input_usd_per_mtok": 5, "output_usd_per_mtok": 15},
                     z={"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6})
    assert _router(config).choose(_request()).order == ["z", "x", "y"]


def test_weights_without_a_routing_block_still_split_first_choices() -> None:
    config = parse_config({
        "models": {"chat": {"deployments": ["x", "y"], "weights": {"x": 3, "y": 1}}},
        "deployments": {n: {"provider": "simulated", "model": "m"} for n in ("x", "y")}})
    router = _router(config)
    first = Counter(router.choose(_request()).order[0] for _ in range(4000))
    assert 0.70 < first["x"] / 4000 < 0.80


def test_a_sticky_variant_puts_its_deployment_first_with_the_rest_as_fallbacks() -> None:
    ab = {"strategy": "weighted", "variants": {"a": {"deployment": "x", "weight": 50},
                                               "b": {"deployment": "z", "weight": 50}}}
    router = _router(_config(ab))
    by_user = {}
    for n in range(200):
        choices = {tuple(router.choose(_request(user=f"u{n}")).order) for _ in range(5)}
        assert len(choices) == 1  # the rng never moves a user
        by_user[f"u{n}"] = router.choose(_request(user=f"u{n}"))
    orders = {choice.variant: choice.order for choice in by_user.values()}
    assert orders == {"a": ["x", "y", "z"], "b": ["z", "x", "y"]}


def test_a_stamped_variant_is_kept_and_a_stale_one_reassigned() -> None:
    router = _router(_config({"canary": {"deployment": "z", "percent": 0}}))
    assert router.choose(_request(variant="stable")).variant == "stable"
    assert router.choose(_request(variant="canary")).variant == "stable"  # rolled back: 0 %
    assert _router(_config()).choose(_request(variant="a")).variant is None  # no such arm
    ramped = _router(_config({"canary": {"deployment": "z", "percent": 100}}))
    choice = ramped.choose(_request(variant="canary"))
    assert (choice.variant, choice.order) == ("canary", ["z", "x", "y"])


def test_a_shadow_copy_goes_only_to_the_shadow_deployment() -> None:
    router = _router(_config({"shadow": {"deployment": "z", "percent": 10}},
                             deployments=["x", "y"]))
    copy = _request(shadow_of="req_0", variant=SHADOW).model_copy(
        update={"tenant": SHADOW_ACCOUNT})
    assert (router.choose(copy).order, router.choose(copy).variant) == (["z"], SHADOW)
    # A tenant's own request claiming to be a copy is routed like any other.
    assert router.choose(_request(shadow_of="req_0")).order == ["x", "y"]


def test_a_request_too_long_for_a_deployment_goes_to_the_next() -> None:
    router = _router(_config(x={"max_context_tokens": 300}, y={"max_context_tokens": 100_000}))
    assert router.choose(_request("short")).order == ["x", "y", "z"]
    assert router.choose(_request(LONG)).order == ["y", "z"]
    # The requested output counts too.
    assert router.choose(_request("short", max_tokens=299)).order == ["y", "z"]


def test_a_request_no_deployment_fits_is_refused_naming_messages() -> None:
    config = _config(deployments=["x", "y"], x={"max_context_tokens": 100},
                     y={"max_context_tokens": 200})
    choice = _router(config).choose(_request(LONG))
    assert choice.order == [] and choice.refusal is not None
    assert (choice.refusal.type, choice.refusal.code, choice.refusal.param) == (
        "invalid_request_error", "context_length_exceeded", "messages")
    assert "(200 tokens)" in choice.refusal.message


async def test_the_processor_records_the_variant_and_refuses_what_fits_nowhere() -> None:
    config = _config({"canary": {"deployment": "z", "percent": 100}}, deployments=["x", "y"],
                     x={"max_context_tokens": 100}, y={"max_context_tokens": 100},
                     z={"max_context_tokens": 100_000})
    providers = {name: build_provider(name, deployment, None)  # type: ignore[arg-type]
                 for name, deployment in config.deployments.items()}
    processor = RequestProcessor(config, providers, lambda: NOW, rng=random.Random(1))
    outcome = await processor.process(_request(requested_model="latest"))
    assert outcome.result is not None and outcome.result.status is RequestStatus.SUCCEEDED
    assert (outcome.result.deployment, outcome.result.variant) == ("z", "canary")
    assert outcome.result.requested_model == "latest"
    assert [usage.variant for usage in outcome.usage] == ["canary"]
    assert processor.stats.in_flight["z"] == 0 and processor.stats.latency_ms("z") is not None

    narrow = _config(deployments=["x"], x={"max_context_tokens": 100})
    refused = await RequestProcessor(narrow, providers).process(_request(LONG))
    assert refused.result is not None and refused.result.status is RequestStatus.FAILED
    assert refused.result.error is not None
    assert refused.result.error.code == "context_length_exceeded" and refused.usage == []
