"""Routing end to end through the openai SDK: aliases, sticky A/B variants, canary share,
shadow copies and the context-window rule, each checked in the ledger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest
from sqlalchemy import text

from broker.config import SluiceConfig, parse_config
from broker.routing import SHADOW_ACCOUNT, assign_variant
from broker.settings import KafkaSettings
from broker.stores.prices import PriceSpec, set_prices
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack

pytestmark = pytest.mark.integration

LONG = "lorem ipsum dolor sit amet " * 100  # ~500 tokens
USERS = [f"user-{n}" for n in range(16)]


def routing_config() -> SluiceConfig:
    deployment = {"provider": "openai", "base_url": f"{SIM_BASE}/v1",
                  "input_usd_per_mtok": "1", "output_usd_per_mtok": "2"}
    names = ("a", "b", "stable", "candidate", "mirror", "small", "large")
    deployments: dict[str, Any] = {name: {**deployment, "model": f"up-{name}"} for name in names}
    deployments["small"]["max_context_tokens"] = 200
    deployments["large"]["max_context_tokens"] = 4000
    return parse_config({
        "aliases": {"ab-latest": "ab"},
        "models": {
            "ab": {"deployments": ["a", "b"], "routing": {
                "strategy": "weighted", "sticky": "user",
                "variants": {"a": {"deployment": "a", "weight": 50},
                             "b": {"deployment": "b", "weight": 50}}}},
            "canaried": {"deployments": ["stable"], "routing": {
                "canary": {"deployment": "candidate", "percent": 30},
                "shadow": {"deployment": "mirror", "percent": 100}}},
            "ctx": {"deployments": ["small", "large"]},
        },
        "deployments": deployments,
    })


def expected_variant(config: SluiceConfig, model: str, user: str) -> str | None:
    body = ChatCompletionRequest(model=model, user=user,
                                 messages=[ChatMessage(role="user", content="x")])
    request = InferenceRequest.model_validate({
        "id": "r", "model": model, "body": body, "tenant": "acme",
        "created_at": "2030-01-01T00:00:00Z"})
    return assign_variant(model, config.models[model].routing, request)


async def ask(client: openai.AsyncOpenAI, model: str, user: str, text: str = "hello",
              **extra: Any) -> Any:
    return await client.chat.completions.create(
        model=model, user=user, messages=[{"role": "user", "content": text}], **extra)


async def rows(stack: Stack, sql: str) -> list[Any]:
    async with stack.engine.connect() as connection:
        return list((await connection.execute(text(sql))).all())


async def test_aliases_variants_canary_and_shadow_reach_the_ledger(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = routing_config()
    async with running_stack(kafka_settings, database_url, config=config) as stack:
        # Deployments reached only through a canary or shadow are not in the model's
        # `deployments`, whose prices the config import covers: priced here as an operator
        # would (`sluice prices set`).
        await set_prices(stack.engine, [
            PriceSpec(model="canaried", deployment=name, input_usd_per_mtok=Decimal(1),
                      output_usd_per_mtok=Decimal(2),
                      effective_from=datetime.now(UTC) - timedelta(minutes=1))
            for name in ("candidate", "mirror")])
        client = stack.openai()
        async with client:
            listed = {model.id async for model in client.models.list()}
            assert {"ab", "ab-latest", "canaried", "ctx"} <= listed

            # A/B through the alias: every user twice.
            answers = await asyncio.gather(*(ask(client, "ab-latest", user)
                                             for user in USERS * 2))
            served = {(user, answer.model) for user, answer in zip(USERS * 2, answers,
                                                                    strict=True)}
            assert len(served) == len(USERS)  # each user always got the same deployment
            for user, upstream in served:
                assert upstream == f"up-{expected_variant(config, 'ab', user)}"

            # Canary (30 % of callers, sticky) with every request mirrored.
            canary_answers = await asyncio.gather(*(ask(client, "canaried", user)
                                                    for user in USERS))
            for user, answer in zip(USERS, canary_answers, strict=True):
                variant = expected_variant(config, "canaried", user)
                assert answer.model == ("up-candidate" if variant == "canary" else "up-stable")
                assert answer.model != "up-mirror"  # the shadow's answer is never returned

        # The ledger: alias and model, variant on requests and usage, per user.
        ab_rows = await eventually(lambda: _when_count(stack, """
            SELECT r.requested_model, r.model, r.variant, u.variant, u.deployment
            FROM requests r JOIN usage_events u ON u.request_id = r.id
            WHERE r.model = 'ab' AND r.status = 'succeeded'""", len(USERS) * 2))
        assert {(row[0], row[1]) for row in ab_rows} == {("ab-latest", "ab")}
        assert all(row[2] == row[3] == row[4] for row in ab_rows)  # variant a -> deployment a
        assert {row[2] for row in ab_rows} == {"a", "b"}

        expected_canaries = sum(expected_variant(config, "canaried", user) == "canary"
                                for user in USERS)
        assert 0 < expected_canaries < len(USERS)
        canaried = await eventually(lambda: _when_count(stack, """
            SELECT r.variant, u.deployment FROM requests r
            JOIN usage_events u ON u.request_id = r.id
            WHERE r.model = 'canaried' AND r.tenant = 'acme'""", len(USERS)))
        assert sorted(canaried) == sorted(
            [("canary", "candidate")] * expected_canaries
            + [("stable", "stable")] * (len(USERS) - expected_canaries))

        # Shadow copies: served by the mirror, billed to the shadow account, linked back.
        shadows = await eventually(lambda: _when_count(stack, f"""
            SELECT s.shadow_of, s.variant, s.status, s.lane, u.deployment, u.tenant,
                   u.api_key_id, u.cost_usd, o.tenant
            FROM requests s JOIN usage_events u ON u.request_id = s.id
            JOIN requests o ON o.id = s.shadow_of
            WHERE s.tenant = '{SHADOW_ACCOUNT}'
            -- the lane arrives with the request record, which the ledger may read after
            -- the result's
            AND s.lane IS NOT NULL""", len(USERS)))
        for shadow_of, variant, status, lane, deployment, tenant, key, cost, original in shadows:
            assert shadow_of.startswith("req_") and original == "acme"
            assert (variant, status, lane, deployment) == ("shadow", "succeeded", "batch",
                                                           "mirror")
            assert (tenant, key) == (SHADOW_ACCOUNT, None) and cost > 0
        assert await stack.scalar(
            "SELECT count(*) FROM usage_events WHERE tenant = 'acme' AND deployment = 'mirror'"
        ) == 0


async def _when_count(stack: Stack, sql: str, count: int) -> list[Any]:
    found = await rows(stack, sql)
    return found if len(found) >= count else []


async def test_a_prompt_too_long_for_a_deployment_fails_over_to_a_larger_one(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url, config=routing_config()) as stack:
        client = stack.openai()
        async with client:
            short = await ask(client, "ctx", "u", "hello")
            long = await ask(client, "ctx", "u", LONG)
            assert (short.model, long.model) == ("up-small", "up-large")
            with pytest.raises(openai.BadRequestError) as refused:
                await ask(client, "ctx", "u", LONG, max_tokens=5000)
        assert refused.value.code == "context_length_exceeded"
        assert refused.value.param == "messages"
        async def served_by() -> Any:
            return await stack.scalar(
                "SELECT deployment FROM usage_events WHERE request_id = :id", id=long.id)

        assert await eventually(served_by) == "large"
