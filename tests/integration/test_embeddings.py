"""Embeddings through the queue: sync, async and a 1,000-line batch, with the official SDK."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from sqlalchemy import text

from broker.config import SluiceConfig, parse_config
from broker.settings import KafkaSettings
from simulator.embeddings import vector
from tests.integration.stack import SIM_BASE, Stack, eventually
from tests.integration.test_batches import FINAL, _jsonl, _lines, _until, batch_stack

pytestmark = pytest.mark.integration

EMBED = "text-embedding-3-small"


def _config() -> SluiceConfig:
    return parse_config({
        "models": {"gpt-4o-mini": {"deployments": ["chat"]},
                   EMBED: {"kind": "embedding", "deployments": ["embed"]}},
        "deployments": {
            "chat": {"provider": "openai", "base_url": f"{SIM_BASE}/v1", "model": "gpt-4o-mini"},
            "embed": {"provider": "openai", "base_url": f"{SIM_BASE}/v1", "model": EMBED,
                      "input_usd_per_mtok": "0.02", "output_usd_per_mtok": "0"}},
    })


def _f32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, database_url: str) -> AsyncIterator[Stack]:
    async with batch_stack(kafka_settings, database_url, config=_config()) as running:
        yield running


@pytest.fixture
async def sdk(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    client = stack.openai()
    yield client
    await client.close()


async def test_embeddings_sync_are_billed_by_input_tokens(stack: Stack, sdk: AsyncOpenAI) -> None:
    response = await sdk.embeddings.with_raw_response.create(
        model=EMBED, input=["the cat", "a dog"], dimensions=8)
    embedded = response.parse()
    # The SDK asks for base64 unless told otherwise and decodes the float32 bytes.
    assert [item.embedding for item in embedded.data] == [_f32(vector("the cat", 8)),
                                                          _f32(vector("a dog", 8))]
    request_id = response.headers["x-request-id"]

    async def billed() -> Any:
        async with stack.engine.connect() as connection:
            return (await connection.execute(text(
                "select input_tokens, output_tokens, cost_usd from usage_events "
                "where request_id = :id"), {"id": request_id})).first()

    row = await eventually(billed)
    assert (row[0], row[1]) == (embedded.usage.prompt_tokens, 0)
    assert row[2] is not None and row[2] > 0  # priced from the catalog, input only
    as_floats = await sdk.embeddings.create(model=EMBED, input="the cat", dimensions=8,
                                            encoding_format="float")
    assert as_floats.data[0].embedding == vector("the cat", 8)


async def test_the_wrong_kind_of_model_is_a_400_naming_model(sdk: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat_model:
        await sdk.embeddings.create(model="gpt-4o-mini", input="x")
    assert chat_model.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as embedding_model:
        await sdk.chat.completions.create(model=EMBED,
                                          messages=[{"role": "user", "content": "x"}])
    assert "/v1/embeddings" in str(embedding_model.value)


async def test_embeddings_async_then_polled(stack: Stack) -> None:
    accepted = await stack.client.post(
        "/v1/embeddings", headers={**stack.auth, "Prefer": "respond-async"},
        json={"model": EMBED, "input": "later", "dimensions": 4})
    assert accepted.status_code == 202
    status_url = accepted.json()["status_url"].replace("http://ingress", "")

    async def final() -> Any:
        state = (await stack.client.get(status_url, headers=stack.auth)).json()
        return state if state["status"] == "succeeded" else None

    state = await eventually(final)
    assert state["result"]["data"][0]["embedding"] == vector("later", 4)


async def test_a_thousand_line_embeddings_batch(stack: Stack, sdk: AsyncOpenAI) -> None:
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": EMBED, "input": f"document {i}", "dimensions": 4}}
             for i in range(1000)]
    uploaded = await sdk.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    created = await sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings",
                                       completion_window="24h")
    batch = await _until(sdk, created.id, FINAL, timeout_s=90)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.completed == 1000
    output = await _lines(sdk, batch.output_file_id)
    for entry in output:
        index = int(entry["custom_id"][1:])
        body = entry["response"]["body"]
        assert body["data"][0]["embedding"] == vector(f"document {index}", 4)
    # Usage comes on its own topic: the ledger may record the last lines' usage a moment
    # after their results completed the batch.
    await eventually(lambda: stack.scalar(
        "select count(*) = 1000 from usage_events where model = :m", m=EMBED))
    await asyncio.sleep(0)
