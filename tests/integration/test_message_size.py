"""Message size is a contract: what Kafka cannot carry is a clear error, never a retry loop.

On both engines, with the broker's real `message.max.bytes` (about 1 MiB by default): a
prompt over it is answered 413 naming the limit, an answer over it ends `failed` with code
`result_too_large` and is billed once, and a batch line over it lands in the error file.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from broker.kafka import partition_ids, topics_for
from broker.settings import KafkaSettings
from simulator import SimulatorSettings
from tests.integration.stack import Stack, eventually, running_stack
from tests.integration.test_batches import (
    FINAL,
    _create,
    _line,
    _lines,
    _sdk,
    _until,
    _upload,
    batch_stack,
)

pytestmark = pytest.mark.integration

HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there!"}]}


def _huge_prompt(limit: int) -> dict[str, Any]:
    # Twice the brokers' limit, under ingress's own 4 MiB body limit.
    return {"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "word " * (2 * limit // 5)}]}


async def _uncommitted(stack: Stack, group: str, topic: str) -> int:
    """Records of `topic` that `group` has not committed past (all of them if none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka.kafka_bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partition_ids(stack.kafka, topic)]
        ends = await consumer.end_offsets(tps)
        return sum([ends[tp] - (await consumer.committed(tp) or 0) for tp in tps])
    finally:
        await consumer.stop()


async def test_a_prompt_over_the_brokers_limit_is_413_naming_the_limit(
    kafka_settings: KafkaSettings, database_url: str, broker_limits: int
) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        for path, headers in [("/v1/chat/completions", {}),
                              ("/v1/chat/completions", {"Prefer": "respond-async"}),
                              ("/v1/requests", {})]:
            response = await stack.client.post(path, json=_huge_prompt(broker_limits),
                                               headers={**stack.auth, **headers})
            assert response.status_code == 413, response.text
            error = response.json()["error"]
            assert error["code"] == "request_too_large"
            assert error["type"] == "invalid_request_error"
            assert f"{broker_limits} bytes" in error["message"]
            assert "message.max.bytes" in error["message"]
        # Nothing was queued, and the stack still serves everyone else.
        topic = topics_for(stack.kafka).requests("gpt-4o-mini")
        assert await _uncommitted(stack, f"{stack.kafka.topic_prefix}workers.gpt-4o-mini",
                                  topic) == 0
        ok = await stack.client.post("/v1/chat/completions", json=HELLO, headers=stack.auth)
        assert ok.status_code == 200, ok.text


async def test_an_answer_over_the_limit_fails_once_billed_once_and_frees_its_slot(
    kafka_settings: KafkaSettings, database_url: str, broker_limits: int
) -> None:
    simulator = SimulatorSettings(answer_bytes=broker_limits + 50_000)
    async with running_stack(kafka_settings, database_url, simulator=simulator) as stack:
        response = await stack.client.post("/v1/chat/completions", json=HELLO,
                                           headers=stack.auth)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] == "result_too_large"
        assert f"{broker_limits} bytes" in error["message"]
        request_id = response.headers["x-request-id"]

        async def recorded() -> Any:
            return await stack.scalar(
                "select status from requests where id = :id and status <> 'queued'",
                id=request_id)

        assert await eventually(recorded) == "failed"
        polled = await stack.client.get(f"/v1/requests/{request_id}", headers=stack.auth)
        assert polled.json()["status"] == "failed"
        assert polled.json()["error"]["code"] == "result_too_large"
        # Billed once: the provider call happened and used tokens. (Its usage event travels
        # on another topic than the result, so the ledger may record it a fetch later.)
        async def billed_once() -> bool:
            return await stack.scalar(
                "select count(*) from usage_events where request_id = :id",
                id=request_id) == 1

        await eventually(billed_once)
        assert await stack.scalar("select output_tokens from usage_events "
                                  "where request_id = :id", id=request_id) > 1000
        calls = (await stack.simulator.get("/stats")).json()["requests"]
        assert calls == 1, "an answer too large to queue must not be asked for again"

        # The worker let go of the message: its offset is committed.
        topic = topics_for(stack.kafka).requests("gpt-4o-mini")
        group = f"{stack.kafka.topic_prefix}workers.gpt-4o-mini"

        async def committed() -> bool:
            return await _uncommitted(stack, group, topic) == 0

        await eventually(committed)


async def test_a_batch_line_over_the_limit_is_answered_in_the_error_file(
    kafka_settings: KafkaSettings, database_url: str, broker_limits: int
) -> None:
    huge = _huge_prompt(broker_limits)["messages"][0]["content"]
    lines = [_line("small", "Hello?"), _line("huge", huge)]
    async with batch_stack(kafka_settings, database_url) as stack:
        sdk = _sdk(stack)
        batch = await _until(sdk, (await _create(sdk, await _upload(sdk, lines))).id, FINAL)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert batch.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}
        assert [line["custom_id"] for line in await _lines(sdk, batch.output_file_id)] == [
            "small"]
        errors = await _lines(sdk, batch.error_file_id)
        assert [entry["custom_id"] for entry in errors] == ["huge"]
        response = errors[0]["response"]
        assert response["status_code"] == 400
        assert response["body"]["error"]["code"] == "request_too_large"
        assert f"{broker_limits} bytes" in response["body"]["error"]["message"]
