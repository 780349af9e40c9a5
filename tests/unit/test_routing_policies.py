"""Routing configuration, sticky variant assignment, canary shares and shadow copies."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.config import parse_config
from broker.errors import ConfigError
from broker.routing import (
    CANARY,
    SHADOW,
    SHADOW_ACCOUNT,
    STABLE,
    RoutingPolicy,
    assign_variant,
    resolve_alias,
    shadow_copy,
    with_variant,
)
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest, Lane

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DEPLOYMENTS = {name: {"provider": "simulated", "model": "gpt-4o-mini"}
               for name in ("x", "y", "z")}


def _config(routing: dict[str, Any] | None = None, **top: Any) -> Any:
    model: dict[str, Any] = {"deployments": ["x", "y"]}
    if routing is not None:
        model["routing"] = routing
    return parse_config({"models": {"chat": model}, "deployments": DEPLOYMENTS, **top})


def _request(user: str | None = None, *, tenant: str = "acme", key: str | None = "key_1",
             request_id: str = "req_1", stream: bool | None = None) -> InferenceRequest:
    body = ChatCompletionRequest(model="chat", user=user, stream=stream,
                                 messages=[ChatMessage(role="user", content="hi")])
    return InferenceRequest(id=request_id, model="chat", body=body, tenant=tenant,
                            api_key_id=key, created_at=NOW, reply_to="sluice.replies.i1",
                            correlation_id=request_id, webhook_url="https://hooks.example/x")


AB = RoutingPolicy.model_validate({
    "strategy": "weighted", "sticky": "user",
    "variants": {"a": {"deployment": "x", "weight": 90}, "b": {"deployment": "y", "weight": 10}},
})


def test_aliases_resolve_to_models_and_are_checked() -> None:
    config = _config(aliases={"latest": "chat"})
    assert resolve_alias(config, "latest") == "chat"
    assert resolve_alias(config, "chat") == "chat"
    with pytest.raises(ConfigError, match=re.escape("aliases.latest: unknown model 'nope'")):
        _config(aliases={"latest": "nope"})
    with pytest.raises(ConfigError, match=re.escape(
            "aliases.chat: an alias may not have a model's name")):
        _config(aliases={"chat": "chat"})


@pytest.mark.parametrize(("routing", "message"), [
    ({"strategy": "weighted"}, "strategy 'weighted' needs variants"),
    ({"variants": {"a": {"deployment": "x", "weight": 1}}}, "variants need strategy"),
    ({"strategy": "weighted", "variants": {"canary": {"deployment": "x", "weight": 1}}},
     "'canary' is reserved"),
    ({"canary": {"deployment": "nowhere", "percent": 5}},
     "models.chat.routing.canary: unknown deployment 'nowhere'"),
    ({"shadow": {"deployment": "z", "percent": 101}}, "less than or equal to 100"),
    ({"strategy": "fastest"}, "strategy"),
])
def test_bad_routing_blocks_name_the_key(routing: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(routing)


def test_the_same_user_always_gets_the_same_variant() -> None:
    variants = {assign_variant("chat", AB, _request("alice", request_id=f"r{n}"))
                for n in range(1000)}
    assert len(variants) == 1


def test_variants_split_users_by_weight() -> None:
    drawn = Counter(assign_variant("chat", AB, _request(f"user-{n}")) for n in range(10_000))
    assert set(drawn) == {"a", "b"}
    assert 0.085 < drawn["b"] / 10_000 < 0.115


def test_sticky_by_tenant_or_key_ignores_the_user_field() -> None:
    by_tenant = AB.model_copy(update={"sticky": "tenant"})
    by_key = AB.model_copy(update={"sticky": "key"})
    per_tenant = {assign_variant("chat", by_tenant, _request(f"u{n}", key=f"k{n}"))
                  for n in range(200)}
    per_key = {assign_variant("chat", by_key, _request(f"u{n}", tenant=f"t{n}"))
               for n in range(200)}
    assert len(per_tenant) == len(per_key) == 1  # users (and the other one) do not matter
    # Without a user, `sticky: user` falls back to the key: each key keeps its variant.
    keys = Counter(assign_variant("chat", AB, _request(None, key=f"key_{n}")) for n in range(2000))
    assert set(keys) == {"a", "b"}


def test_canary_takes_its_share_and_raising_it_only_adds_callers() -> None:
    def canaried(percent: float) -> set[str]:
        policy = RoutingPolicy.model_validate({"canary": {"deployment": "y", "percent": percent}})
        return {f"user-{n}" for n in range(10_000)
                if assign_variant("chat", policy, _request(f"user-{n}")) == CANARY}

    five, twenty = canaried(5), canaried(20)
    assert 0.04 < len(five) / 10_000 < 0.06
    assert 0.18 < len(twenty) / 10_000 < 0.22
    assert five <= twenty  # a caller already in the canary stays in it as it ramps up
    stable = RoutingPolicy.model_validate({"canary": {"deployment": "y", "percent": 0}})
    assert assign_variant("chat", stable, _request("u")) == STABLE
    assert assign_variant("chat", RoutingPolicy(), _request("u")) is None


def test_with_variant_stamps_the_request() -> None:
    request = _request("alice")
    assert with_variant(RoutingPolicy(), request) is request
    assert with_variant(AB, request).variant == assign_variant("chat", AB, request)


def test_shadow_copy_runs_in_the_batch_lane_under_the_shadow_account() -> None:
    policy = RoutingPolicy.model_validate({"shadow": {"deployment": "z", "percent": 100}})
    original = _request("alice", stream=True).model_copy(update={"requested_model": "latest"})
    copy = shadow_copy(policy, original, NOW)
    assert copy is not None
    assert (copy.tenant, copy.api_key_id, copy.lane) == (SHADOW_ACCOUNT, None, Lane.BATCH)
    assert (copy.shadow_of, copy.variant, copy.requested_model) == ("req_1", SHADOW, "latest")
    # Nothing delivers it anywhere: no reply topic, correlation or webhook, no stream.
    assert copy.reply_to is copy.correlation_id is copy.webhook_url is None
    assert isinstance(copy.body, ChatCompletionRequest) and not copy.body.stream
    assert copy.id != original.id and shadow_copy(policy, copy, NOW) is None  # no copy of one


def test_shadow_mirrors_its_share_of_requests_by_id() -> None:
    policy = RoutingPolicy.model_validate({"shadow": {"deployment": "z", "percent": 10}})
    mirrored = [shadow_copy(policy, _request("u", request_id=f"req_{n}"), NOW)
                for n in range(10_000)]
    share = sum(copy is not None for copy in mirrored) / 10_000
    assert 0.085 < share < 0.115
    again = shadow_copy(policy, _request("u", request_id="req_7"), NOW)
    assert (again is None) == (mirrored[7] is None)  # the same request, the same decision
