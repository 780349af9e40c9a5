"""Anthropic's Messages API at the edge, driven by the official `anthropic` SDK.

The stack's model is an OpenAI-compatible deployment on the simulator: the SDK's calls
are translated to our form, queued through real Kafka, answered by the simulator and
rendered back as Anthropic's messages, events, errors and Message Batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import Message, ToolUseBlock

from broker.batches.settings import BatchSettings
from broker.settings import KafkaSettings
from broker.stores.keys import create_api_key
from broker.tokens import count_request_prompt_tokens
from schemas import ChatCompletionRequest
from simulator import SimulatorSettings
from simulator.answers import simulate_completion
from simulator.settings import Faults
from tests.integration.stack import Stack, demo_config, eventually, running_stack
from workers.batches import BatchTracker

# A gateway feature above the Kafka port: on the production engine only (the port's own
# behaviour is proven on both engines by tests/kafka_contract.py and the pipeline tests),
# which keeps CI within its time.
pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

MODEL = "gpt-4o-mini"
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "required": ["city"],
                            "properties": {"city": {"type": "string"}}}}


def _client(stack: Stack, api_key: str | None = None) -> anthropic.AsyncAnthropic:
    """The SDK talking to the stack's ingress in-process, as it would over the network."""
    app = stack.client._transport.app  # type: ignore[attr-defined]
    return anthropic.AsyncAnthropic(
        base_url="http://ingress", api_key=api_key or stack.api_key, max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), timeout=30))


def _expected_text(chat: dict[str, Any]) -> str:
    """What the simulator answers our translation of a request (deterministic)."""
    completion = simulate_completion(ChatCompletionRequest.model_validate(chat),
                                     upstream_model=MODEL)
    return completion.choices[0].message.content or ""


async def until_ended(client: anthropic.AsyncAnthropic, batch_id: str) -> Any:
    """The Message Batch `batch_id` once its processing ended (polled for up to 40 s)."""
    deadline = time.monotonic() + 40
    batch = await client.messages.batches.retrieve(batch_id)
    while batch.processing_status != "ended" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        batch = await client.messages.batches.retrieve(batch_id)
    assert batch.processing_status == "ended", batch
    return batch


@asynccontextmanager
async def _stack(kafka: KafkaSettings, database_url: str, with_batches: bool = False,
                 **options: Any) -> AsyncIterator[tuple[Stack, Any]]:
    async with running_stack(kafka, database_url, **options) as stack:
        client = _client(stack)
        stop = asyncio.Event()
        tracker = asyncio.create_task(BatchTracker(
            kafka, BatchSettings(batch_poll_interval_s=0.05), stack.engine,
            demo_config()).run(stop)) if with_batches else None
        try:
            yield stack, client
        finally:
            stop.set()
            if tracker is not None:
                await asyncio.wait_for(tracker, 20)
            await client.close()


async def test_create_with_a_system_prompt_and_count_tokens(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    system, prompt = "Answer like a pirate.", "Where is the treasure?"
    chat = {"model": MODEL, "max_tokens": 64, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": prompt}]}
    async with _stack(kafka_settings, database_url) as (stack, client):
        message = await client.messages.create(
            model=MODEL, max_tokens=64, system=system,
            messages=[{"role": "user", "content": prompt}])
        assert isinstance(message, Message) and message.id.startswith("msg_")
        assert message.role == "assistant" and message.stop_reason == "end_turn"
        assert [block.type for block in message.content] == ["text"]
        assert message.content[0].text == _expected_text(chat)  # type: ignore[union-attr]
        # The system prompt reached the provider: it is counted in the input.
        prompt_tokens = count_request_prompt_tokens(
            ChatCompletionRequest.model_validate(chat), MODEL)
        assert message.usage.input_tokens == prompt_tokens
        assert message.usage.output_tokens == 16
        assert message.usage.cache_read_input_tokens == 0
        counted = await client.messages.count_tokens(
            model=MODEL, system=system, messages=[{"role": "user", "content": prompt}])
        assert counted.input_tokens == prompt_tokens
        # The ledger billed the request the message id names.
        request_id = "req_" + message.id.removeprefix("msg_")

        async def billed() -> Any:
            return await stack.scalar("select input_tokens from usage_events "
                                      "where request_id = :id", id=request_id)

        assert await eventually(billed) == prompt_tokens
        short = await client.messages.create(
            model=MODEL, max_tokens=3, messages=[{"role": "user", "content": prompt}])
        assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
        # Anthropic's own header works as well as the SDK's bearer token.
        raw = await stack.client.post("/v1/messages", headers={"x-api-key": stack.api_key},
                                      json={"model": MODEL, "max_tokens": 8, "messages": [
                                          {"role": "user", "content": prompt}]})
        assert raw.status_code == 200 and raw.json()["type"] == "message"
        assert raw.headers["request-id"].startswith("req_")


async def test_a_tool_use_round_trip_whole_and_streamed(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    question: Any = {"role": "user", "content": "What's the weather in Oslo?"}
    async with _stack(kafka_settings, database_url) as (_, client):
        first = await client.messages.create(
            model=MODEL, max_tokens=256, tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"}, messages=[question])
        assert first.stop_reason == "tool_use"
        (call,) = first.content
        assert isinstance(call, ToolUseBlock) and call.name == "get_weather"
        assert isinstance(call.input, dict) and isinstance(call.input["city"], str)
        conversation = [question, {"role": "assistant", "content": first.content},
                        {"role": "user", "content": [
                            {"type": "tool_result", "tool_use_id": call.id,
                             "content": '{"celsius": 4}'}]}]
        second = await client.messages.create(model=MODEL, max_tokens=256,
                                              tools=[WEATHER],
                                              messages=conversation)
        assert second.stop_reason == "end_turn" and second.content[0].type == "text"
        # The earlier call and its result are part of the prompt now.
        assert second.usage.input_tokens > first.usage.input_tokens
        async with client.messages.stream(model=MODEL, max_tokens=256,
                                          tools=[WEATHER],
                                          messages=[question]) as stream:
            streamed = await stream.get_final_message()
        assert streamed.stop_reason == "tool_use"
        (streamed_call,) = streamed.content
        assert isinstance(streamed_call, ToolUseBlock)
        assert streamed_call.input == call.input and streamed_call.name == "get_weather"


async def test_streaming_text(kafka_settings: KafkaSettings, database_url: str) -> None:
    prompt = "Tell me a story."
    chat = {"model": MODEL, "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": prompt}]}
    async with _stack(kafka_settings, database_url) as (_, client):
        async with client.messages.stream(
                model=MODEL, max_tokens=100,
                messages=[{"role": "user", "content": prompt}]) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert len(pieces) > 1
        assert "".join(pieces) == _expected_text(chat)
        assert final.content[0].text == "".join(pieces)
        assert final.stop_reason == "end_turn" and final.usage.output_tokens == 16
        assert final.usage.input_tokens == count_request_prompt_tokens(
            ChatCompletionRequest.model_validate(chat), MODEL)


async def test_a_stream_broken_mid_answer_raises_from_its_error_event(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    cutting = SimulatorSettings(faults=Faults(stream_cut_rate=1.0))
    async with running_stack(kafka_settings, database_url, simulator=cutting) as stack:
        async with _client(stack) as client:
            received = []
            with pytest.raises(anthropic.APIStatusError, match="broke off") as broken:
                async with client.messages.stream(
                        model=MODEL, max_tokens=100,
                        messages=[{"role": "user", "content": "Go on."}]) as stream:
                    async for event in stream:
                        received.append(event.type)
        assert received[:2] == ["message_start", "content_block_start"]
        assert "message_stop" not in received
        assert broken.value.body["type"] == "error"  # type: ignore[index]


async def test_errors_are_the_sdks_typed_exceptions(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    hello: Any = [{"role": "user", "content": "hello"}]
    async with _stack(kafka_settings, database_url) as (stack, client):
        async with _client(stack, "sk-not-a-key") as stranger:
            with pytest.raises(anthropic.AuthenticationError) as denied:
                await stranger.messages.create(model=MODEL, max_tokens=8, messages=hello)
        assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError) as missing:
            await client.post("/v1/messages", cast_to=Message,
                              body={"model": MODEL, "messages": hello})
        body: Any = missing.value.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert "max_tokens" in body["error"]["message"]
        with pytest.raises(anthropic.NotFoundError) as unknown:
            await client.messages.create(model="no-such-model", max_tokens=8, messages=hello)
        assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve("msgbatch_0123")


async def test_a_message_batch_end_to_end(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    def params(prompt: str, model: str = MODEL) -> Any:
        return {"model": model, "max_tokens": 32, "system": "Be brief.",
                "messages": [{"role": "user", "content": prompt}]}

    async with _stack(kafka_settings, database_url, with_batches=True) as (_, client):
        created = await client.messages.batches.create(requests=[
            {"custom_id": "first", "params": params("One?")},
            {"custom_id": "second", "params": params("Two?")},
            {"custom_id": "nowhere", "params": params("Three?", model="no-such-model")}])
        assert created.type == "message_batch" and created.id.startswith("msgbatch_")
        assert created.processing_status == "in_progress"
        assert created.request_counts.processing == 3 and created.results_url is None
        batch = await until_ended(client, created.id)
        assert batch.ended_at is not None and batch.results_url
        assert batch.request_counts.to_dict() == {
            "processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 0}
        results = {entry.custom_id: entry.result
                   async for entry in await client.messages.batches.results(created.id)}
        assert set(results) == {"first", "second", "nowhere"}
        for custom_id, prompt in (("first", "One?"), ("second", "Two?")):
            result = results[custom_id]
            assert result.type == "succeeded"
            chat = params(prompt)
            chat["messages"] = [{"role": "system", "content": "Be brief."},
                                *chat["messages"]]
            assert result.message.content[0].text == _expected_text(chat)
        errored = results["nowhere"]
        assert errored.type == "errored"
        assert errored.error.error.type == "invalid_request_error"
        assert "no-such-model" in errored.error.error.message
        page = await client.messages.batches.list(limit=10)
        assert [entry.id for entry in page.data] == [created.id]
        # Our own id for the same batch names it too.
        same = await client.messages.batches.retrieve(created.id.replace("msgbatch_", "batch_"))
        assert same.id == created.id


async def test_cancelling_a_message_batch(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    slow = SimulatorSettings(latency_ms=200)
    requests: Any = [{"custom_id": f"r{i}", "params": {
        "model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": f"Q{i}"}]}}
        for i in range(200)]
    async with _stack(kafka_settings, database_url, with_batches=True,
                      simulator=slow) as (_, client):
        created = await client.messages.batches.create(requests=requests)
        canceling = await client.messages.batches.cancel(created.id)
        assert canceling.processing_status == "canceling"
        assert canceling.cancel_initiated_at is not None
        batch = await until_ended(client, created.id)
        counts = batch.request_counts
        assert counts.canceled > 0 and counts.processing == counts.errored == 0
        assert counts.succeeded + counts.canceled == 200
        results = [entry async for entry in await client.messages.batches.results(created.id)]
        assert sorted(entry.custom_id for entry in results) == sorted(f"r{i}" for i in range(200))
        assert sum(entry.result.type == "canceled" for entry in results) == counts.canceled


def _one_request(prompt: str) -> Any:
    return [{"custom_id": "only", "params": {
        "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": prompt}]}}]


async def test_listing_message_batches_pages_both_ways(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with _stack(kafka_settings, database_url) as (stack, client):
        made = [(await client.messages.batches.create(requests=_one_request(f"Q{i}"))).id
                for i in range(5)]
        newest = made[::-1]

        async def page(**cursor: str) -> tuple[list[str], bool, str | None, str | None]:
            listed = await client.messages.batches.list(limit=2, **cursor)
            return ([batch.id for batch in listed.data], bool(listed.has_more),
                    listed.first_id, listed.last_id)

        assert await page() == (newest[0:2], True, newest[0], newest[1])
        assert await page(after_id=newest[1]) == (newest[2:4], True, newest[2], newest[3])
        assert await page(after_id=newest[3]) == (newest[4:], False, newest[4], newest[4])
        # Back towards newer batches, still newest first: the two just before the cursor.
        assert await page(before_id=newest[4]) == (newest[2:4], True, newest[2], newest[3])
        assert await page(before_id=newest[2]) == (newest[0:2], False, newest[0], newest[1])
        assert await page(before_id=newest[1]) == (newest[0:1], False, newest[0], newest[0])
        assert await page(before_id=newest[0]) == ([], False, None, None)
        # The SDK's own paging from a `before_id` follows `first_id` to the newest.
        walked = [batch.id async for batch in
                  client.messages.batches.list(before_id=newest[4], limit=2)]
        assert walked == [*newest[2:4], *newest[0:2]]
        # Another tenant's batches are no cursor here.
        other_key, _ = await create_api_key(stack.engine, "other")
        async with _client(stack, other_key) as stranger:
            theirs = (await stranger.messages.batches.create(requests=_one_request("X"))).id
        assert await page(before_id=theirs) == ([], False, None, None)


async def test_deleting_a_message_batch(kafka_settings: KafkaSettings,
                                        database_url: str) -> None:
    slow = SimulatorSettings(latency_ms=200)
    requests: Any = [{"custom_id": f"r{i}", "params": {
        "model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": f"Q{i}"}]}}
        for i in range(50)]
    async with _stack(kafka_settings, database_url, with_batches=True,
                      simulator=slow) as (stack, client):
        created = await client.messages.batches.create(requests=requests)
        with pytest.raises(anthropic.BadRequestError) as running:
            await client.messages.batches.delete(created.id)
        body: Any = running.value.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert "must be ended or canceled" in body["error"]["message"]
        ours = created.id.replace("msgbatch_", "batch_")
        lines = f"batch_req_{ours.removeprefix('batch_')}_%"

        async def billed() -> int:
            return int(await stack.scalar("select count(*) from requests where id like :ids",
                                          ids=lines))

        await eventually(billed, timeout_s=30)  # some requests ran before the cancel
        await client.messages.batches.cancel(created.id)
        await until_ended(client, created.id)
        recorded = await billed()
        async with stack.openai() as openai_client:
            files = await openai_client.batches.retrieve(ours)
            file_ids = [file_id for file_id in (files.input_file_id, files.output_file_id,
                                                files.error_file_id) if file_id]
            assert len(file_ids) >= 2

            other_key, _ = await create_api_key(stack.engine, "other")
            async with _client(stack, other_key) as stranger:
                with pytest.raises(anthropic.NotFoundError):
                    await stranger.messages.batches.delete(created.id)
            assert (await client.messages.batches.retrieve(created.id)).id == created.id

            deleted = await client.messages.batches.delete(created.id)
            assert deleted.id == created.id and deleted.type == "message_batch_deleted"
            with pytest.raises(anthropic.NotFoundError):
                await client.messages.batches.retrieve(created.id)
            with pytest.raises(anthropic.NotFoundError):
                await client.messages.batches.results(created.id)
            with pytest.raises(anthropic.NotFoundError):
                await client.messages.batches.delete(created.id)
            assert (await client.messages.batches.list()).data == []
            # Its results and the input file this door made for it went with it.
            for file_id in file_ids:
                with pytest.raises(openai.NotFoundError):
                    await openai_client.files.retrieve(file_id)
        # What its requests cost stays in the ledger.
        assert await billed() >= recorded > 0
