"""Batch lines that name an alias, through the real stack and both batch doors.

A line naming an alias the key may use is served by the alias's model, on its caller's
sticky A/B variant, as a direct call would be; the ledger records the model, the alias and
the variant. A line naming an alias (or a model) the key may not use is answered in the
error file like an unknown model's.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from broker.config import SluiceConfig
from broker.settings import KafkaSettings
from broker.stores.keys import KeyLimits, create_api_key
from tests.integration.stack import Stack, eventually
from tests.integration.test_anthropic_ingress import _client as anthropic_client
from tests.integration.test_anthropic_ingress import until_ended
from tests.integration.test_batches import FINAL, _create, _lines, _until, _upload, batch_stack
from tests.integration.test_routing import expected_variant, routing_config

# A gateway feature above the Kafka port: on the production engine only.
pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

USERS = [f"user-{n}" for n in range(12)]


def alias_config() -> SluiceConfig:
    """test_routing's models (`ab-latest` names `ab`, split 50/50 between deployments a
    and b, sticky by user) and an alias of another model."""
    config = routing_config()
    return config.model_copy(update={"aliases": {**config.aliases, "ctx-latest": "ctx"}})


def _chat_line(custom_id: str, model: str, user: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "user": user,
                     "messages": [{"role": "user", "content": f"Hello from {user}"}]}}


async def _routed_rows(stack: Stack, batch_id: str, count: int) -> list[Any]:
    """The ledger's request rows of a batch's lines, with their usage, once `count` are in."""
    async with stack.engine.connect() as connection:
        found = list((await connection.execute(text("""
            SELECT r.id, r.model, r.requested_model, r.variant, r.lane, u.variant, u.deployment
            FROM requests r JOIN usage_events u ON u.request_id = r.id
            WHERE r.id LIKE :prefix AND r.status = 'succeeded' AND r.lane IS NOT NULL"""),
            {"prefix": f"batch_req_{batch_id.removeprefix('batch_')}_%"})).all())
    return found if len(found) >= count else []


async def test_openai_batch_lines_naming_an_alias_get_its_model_and_variant(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = alias_config()
    async with batch_stack(kafka_settings, database_url, config=config) as stack:
        # The key lists the alias only: not its model, nor the other alias.
        key, _ = await create_api_key(stack.engine, "acme",
                                      limits=KeyLimits(models=frozenset({"ab-latest"})))
        lines = [_chat_line(user, "ab-latest", user) for user in USERS]
        lines += [_chat_line("forbidden-alias", "ctx-latest", USERS[0]),
                  _chat_line("unlisted-model", "ab", USERS[0])]
        sdk = stack.openai(key)
        async with sdk:
            created = await _create(sdk, await _upload(sdk, lines))
            batch = await _until(sdk, created.id, FINAL)
            assert batch.status == "completed", batch
            assert batch.request_counts is not None
            assert batch.request_counts.model_dump() == {
                "total": len(lines), "completed": len(USERS), "failed": 2}
            output = {line["custom_id"]: line for line in await _lines(sdk, batch.output_file_id)}
            errors = {line["custom_id"]: line for line in await _lines(sdk, batch.error_file_id)}

        variants = {user: expected_variant(config, "ab", user) for user in USERS}
        assert set(variants.values()) == {"a", "b"}  # both arms are reached by these users
        assert set(output) == set(USERS)
        ids = {}
        for user, line in output.items():
            response = line["response"]
            assert response["status_code"] == 200
            assert response["body"]["choices"][0]["message"]["content"]
            # Served on the caller's variant's deployment (up-a or up-b), as a direct call.
            assert response["body"]["model"] == f"up-{variants[user]}"
            ids[line["id"]] = user
        assert set(errors) == {"forbidden-alias", "unlisted-model"}
        for custom_id, model in (("forbidden-alias", "ctx-latest"), ("unlisted-model", "ab")):
            response = errors[custom_id]["response"]
            assert response["status_code"] == 400
            assert f"The model '{model}' does not exist" in response["body"]["error"]["message"]

        rows = await eventually(lambda: _routed_rows(stack, batch.id, len(USERS)))
        assert len(rows) == len(USERS)
        for request_id, model, requested, variant, lane, usage_variant, deployment in rows:
            expected = variants[ids[request_id]]
            assert (model, requested, lane) == ("ab", "ab-latest", "batch")
            assert variant == usage_variant == deployment == expected


async def test_anthropic_message_batch_lines_may_name_an_alias(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    config = alias_config()
    async with batch_stack(kafka_settings, database_url, config=config) as stack:
        key, _ = await create_api_key(stack.engine, "acme",
                                      limits=KeyLimits(models=frozenset({"ab"})))
        client = anthropic_client(stack, key)
        async with client:
            created = await client.messages.batches.create(requests=[
                {"custom_id": custom_id, "params": {
                    "model": model, "max_tokens": 16, "metadata": {"user_id": USERS[1]},
                    "messages": [{"role": "user", "content": "Hello"}]}}
                for custom_id, model in (("alias", "ab-latest"), ("other", "ctx-latest"))])
            await until_ended(client, created.id)
            results = {entry.custom_id: entry.result
                       async for entry in await client.messages.batches.results(created.id)}
        assert results["alias"].type == "succeeded"
        assert results["other"].type == "errored"
        assert "ctx-latest" in results["other"].error.error.message
        rows = await eventually(lambda: _routed_rows(
            stack, created.id.replace("msgbatch_", "batch_"), 1))
        [(_, model, requested, variant, lane, usage_variant, deployment)] = rows
        assert (model, requested, lane) == ("ab", "ab-latest", "batch")
        assert variant == usage_variant == deployment and variant in {"a", "b"}
