"""The OpenAI Batch API, driven by the official `openai` SDK through the real stack.

Upload → create → poll → download with ≥ 1,000 lines, invalid lines in the error file,
cancel mid-way, validation failures, pagination and tenant isolation. The batch tracker
runs beside the stack as it does inside `sluice ledger`.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from openai import AsyncOpenAI, NotFoundError
from openai.types import Batch
from sqlalchemy import text

from broker.batches.files import FileStore
from broker.batches.settings import BatchSettings
from broker.errors import DatabaseUnavailable
from broker.estimates import Estimator
from broker.kafka import (
    KafkaError,
    TopicPartition,
    new_consumer,
    new_producer,
    partition_ids,
    read_present,
)
from broker.settings import KafkaSettings
from broker.stores.keys import create_api_key
from broker.stores.tenants import set_tenant
from broker.tokens import encoding_for_model
from schemas import ChatCompletionRequest, Lane, Topics
from simulator import SimulatorSettings
from simulator.answers import simulate_completion
from tests.integration.stack import Stack, demo_config, eventually, running_stack
from workers.batches import BatchTracker, launcher, validation
from workers.batches.budget import release_batch
from workers.batches.claims import claim

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
FINAL = {"completed", "failed", "expired", "cancelled"}


def _line(custom_id: str, prompt: str, **overrides: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": body, **overrides}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _sdk(stack: Stack, api_key: str | None = None) -> AsyncOpenAI:
    return stack.openai(api_key)


@asynccontextmanager
async def batch_stack(kafka: KafkaSettings, database_url: str,
                      tracker_kafka: KafkaSettings | None = None,
                      **options: Any) -> AsyncIterator[Stack]:
    """`running_stack` plus the batch tracker, as `sluice ledger` runs it."""
    async with running_stack(kafka, database_url, **options) as stack:
        stop = asyncio.Event()
        tracker = asyncio.create_task(BatchTracker(
            tracker_kafka or kafka,
            BatchSettings(batch_poll_interval_s=0.05, batch_cancel_grace_s=10),
            stack.engine, options.get("config") or demo_config()).run(stop))
        try:
            yield stack
        finally:
            stop.set()
            await asyncio.wait_for(tracker, 20)


async def _upload(sdk: AsyncOpenAI, lines: list[dict[str, Any]], name: str = "in.jsonl") -> str:
    """Upload `lines` as a batch input file; its id."""
    return (await sdk.files.create(file=(name, _jsonl(lines)), purpose="batch")).id


async def _create(sdk: AsyncOpenAI, input_file_id: str) -> Batch:
    """A chat-completions batch over `input_file_id`, due in 24 h."""
    return await sdk.batches.create(input_file_id=input_file_id,
                                    endpoint="/v1/chat/completions", completion_window="24h")


async def _until(sdk: AsyncOpenAI, batch_id: str, statuses: set[str],
                 timeout_s: float = 40) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await sdk.batches.retrieve(batch_id)
        if batch.status in statuses or time.monotonic() > deadline:
            assert batch.status in statuses, batch
            return batch
        await asyncio.sleep(0.1)


async def _lines(sdk: AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = await sdk.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_thousand_lines_through_the_openai_sdk(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    lines = [_line(f"r{i}", f"Question number {i}?") for i in range(1000)]
    lines += [_line("bad-model", "hi", body={"model": "nope", "messages": [
                   {"role": "user", "content": "hi"}]}),
              _line("bad-body", "hi", body={"model": MODEL, "messages": []})]
    async with batch_stack(kafka_settings, database_url) as stack:
        sdk = _sdk(stack)
        uploaded = await sdk.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
        assert uploaded.object == "file" and uploaded.purpose == "batch"
        assert uploaded.bytes == len(_jsonl(lines))
        assert (await sdk.files.retrieve(uploaded.id)).filename == "in.jsonl"
        created = await sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions",
            completion_window="24h", metadata={"job": "nightly"})
        assert created.status == "validating" and created.metadata == {"job": "nightly"}
        assert created.expires_at is not None and created.expires_at - created.created_at == 86400
        batch = await _until(sdk, created.id, FINAL)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert batch.request_counts.model_dump() == {"total": 1002, "completed": 1000,
                                                     "failed": 2}
        assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
        output = await _lines(sdk, batch.output_file_id)
        assert sorted(o["custom_id"] for o in output) == sorted(f"r{i}" for i in range(1000))
        for entry in output:
            assert entry["id"].startswith("batch_req_") and entry["error"] is None
            assert entry["response"]["status_code"] == 200
            index = int(entry["custom_id"][1:])
            expected = simulate_completion(ChatCompletionRequest.model_validate(
                lines[index]["body"]), upstream_model=MODEL)
            body = entry["response"]["body"]
            assert body["object"] == "chat.completion"
            assert body["choices"][0]["message"]["content"] == (
                expected.choices[0].message.content)
            assert body["usage"]["prompt_tokens"] == expected.usage.prompt_tokens
        errors = await _lines(sdk, batch.error_file_id)
        assert {e["custom_id"] for e in errors} == {"bad-model", "bad-body"}
        assert all(e["response"]["status_code"] == 400 for e in errors)
        assert all(e["response"]["body"]["error"]["message"] for e in errors)
        # The ledger finds a request topic created after it started by its pattern
        # subscription, within seconds; the batch may finish first.
        async def lane() -> Any:
            return await stack.scalar("select lane from requests where id = :id",
                                      id=output[0]["id"])

        assert await eventually(lane) == "batch"
        deleted = await sdk.files.delete(uploaded.id)
        assert deleted.deleted
        with pytest.raises(NotFoundError):
            await sdk.files.retrieve(uploaded.id)


async def test_cancel_midway_keeps_partial_output(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    lines = [_line(f"c{i}", f"Slow question {i}") for i in range(1000)]
    async with batch_stack(kafka_settings, database_url,
                           simulator=SimulatorSettings(latency_ms=250)) as stack:
        sdk = _sdk(stack)
        file_id = await _upload(sdk, lines, "slow.jsonl")
        created = await _create(sdk, file_id)
        deadline = time.monotonic() + 30
        while True:  # cancel once some lines are done
            batch = await sdk.batches.retrieve(created.id)
            assert batch.request_counts is not None
            if batch.request_counts.completed > 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        cancelling = await sdk.batches.cancel(created.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        batch = await _until(sdk, created.id, {"cancelled"})
        assert batch.cancelled_at and batch.request_counts is not None
        done = batch.request_counts.completed
        assert 0 < done < 1000, batch.request_counts
        output = await _lines(sdk, batch.output_file_id)
        assert len(output) == done
        errors = await _lines(sdk, batch.error_file_id)
        assert len(errors) == 1000 - done
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        assert {o["custom_id"] for o in output} | {e["custom_id"] for e in errors} == {
            f"c{i}" for i in range(1000)}


async def test_validation_pagination_and_tenants(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with batch_stack(kafka_settings, database_url) as stack:
        sdk = _sdk(stack)

        async def submit(lines: list[dict[str, Any]]) -> Batch:
            file_id = await _upload(sdk, lines, "x.jsonl")
            return await _create(sdk, file_id)

        duplicate = await submit([_line("a", "1"), _line("a", "2")])
        wrong_url = await submit([_line("a", "1"), _line("b", "2", url="/v1/embeddings")])
        all_bad = await submit([_line("a", "1", body={"model": "nope", "messages": []})])
        good = await submit([_line("a", "1")])
        for batch, code, line in ((duplicate, "duplicate_custom_id", 2),
                                  (wrong_url, "mismatched_endpoint", 2),
                                  (all_bad, "invalid_request", 1)):
            failed = await _until(sdk, batch.id, FINAL)
            assert failed.status == "failed" and failed.failed_at, failed
            assert failed.errors is not None and failed.errors.data
            first = failed.errors.data[0]
            assert (first.code, first.line) == (code, line)
            assert failed.output_file_id is None
        assert (await _until(sdk, good.id, FINAL)).status == "completed"

        ids, after = [], None
        while True:
            page = await sdk.batches.list(limit=3, **({"after": after} if after else {}))
            ids += [b.id for b in page.data]
            if not page.has_more:
                break
            after = page.data[-1].id
        assert ids == [good.id, all_bad.id, wrong_url.id, duplicate.id]
        raw = (await stack.client.get("/v1/batches?limit=2", headers=stack.auth)).json()
        assert raw["object"] == "list" and raw["has_more"] is True
        assert (raw["first_id"], raw["last_id"]) == (good.id, all_bad.id)

        other_key, _ = await create_api_key(stack.engine, "other-tenant")
        other = _sdk(stack, other_key)
        with pytest.raises(NotFoundError):
            await other.batches.retrieve(good.id)
        with pytest.raises(NotFoundError):
            await other.files.retrieve(good.input_file_id)
        with pytest.raises(NotFoundError):
            await other.batches.cancel(good.id)
        assert (await other.batches.list()).data == []


async def test_fifty_thousand_lines_on_disk_storage(
    kafka_settings: KafkaSettings, database_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_BATCH_FILE_STORAGE", "disk")
    monkeypatch.setenv("SLUICE_BATCH_FILE_DIR", str(tmp_path / "files"))
    data = _jsonl([_line(f"q{i}", f"prompt {i}") for i in range(50_001)])
    async with batch_stack(kafka_settings, database_url) as stack:
        sdk = _sdk(stack)
        uploaded = await sdk.files.create(file=("big.jsonl", data), purpose="batch")
        assert uploaded.bytes == len(data)
        assert (tmp_path / "files" / uploaded.id).stat().st_size == len(data)
        assert (await sdk.files.content(uploaded.id)).content == data
        batch = await _create(sdk, uploaded.id)
        failed = await _until(sdk, batch.id, FINAL)
        assert failed.status == "failed" and failed.errors is not None
        assert [(e.code, e.line) for e in failed.errors.data] == [("too_many_lines", 50_001)]
        assert await stack.scalar("select count(*) from batch_requests") == 0


async def test_expired_batch_keeps_finished_lines(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    lines = [_line(f"e{i}", f"Late question {i}") for i in range(600)]
    async with batch_stack(kafka_settings, database_url,
                           simulator=SimulatorSettings(latency_ms=250)) as stack:
        sdk = _sdk(stack)
        file_id = await _upload(sdk, lines, "late.jsonl")
        created = await _create(sdk, file_id)
        deadline = time.monotonic() + 30
        while True:
            batch = await sdk.batches.retrieve(created.id)
            assert batch.request_counts is not None and time.monotonic() < deadline
            if batch.request_counts.completed > 0:
                break
            await asyncio.sleep(0.05)
        # The window passes (moved, not waited for: it is 24 hours).
        async with stack.engine.begin() as connection:
            await connection.execute(text("update batches set expires_at = now() where id = :id"),
                                     {"id": created.id})
        batch = await _until(sdk, created.id, {"expired"})
        assert batch.expired_at and batch.request_counts is not None
        done = batch.request_counts.completed
        assert 0 < done < 600
        assert len(await _lines(sdk, batch.output_file_id)) == done
        errors = await _lines(sdk, batch.error_file_id)
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}
        assert len(errors) == 600 - done


async def test_batches_draw_on_monthly_budgets(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    lines = [_line(f"b{i}", f"Budgeted question {i}?") for i in range(20)]
    async with batch_stack(kafka_settings, database_url) as stack:
        sdk = _sdk(stack)
        file_id = await _upload(sdk, lines)
        # Each line is estimated at its prompt plus 256 output tokens: 2,000 is too few.
        await set_tenant(stack.engine, "acme", monthly_budget_tokens=2_000)
        refused = await _create(sdk, file_id)
        failed = await _until(sdk, refused.id, FINAL)
        assert failed.status == "failed" and failed.errors is not None
        error = failed.errors.data[0] if failed.errors.data else None
        assert error is not None and error.code == "insufficient_quota"
        assert "monthly token budget of tenant 'acme'" in (error.message or "")
        assert await stack.scalar("SELECT count(*) FROM batch_requests") == 0  # none sent

        await set_tenant(stack.engine, "acme", monthly_budget_tokens=1_000_000)
        admitted = await _create(sdk, file_id)
        done = await _until(sdk, admitted.id, FINAL)
        assert done.status == "completed", done
        assert await stack.scalar("SELECT count(*) FROM spend_holds") == 0  # released at the end
        assert await stack.scalar(
            "SELECT reserved_tokens FROM spend_accounts WHERE scope = 'tenant:acme'") == 0


async def test_a_batch_turns_final_only_after_its_budget_hold_is_released(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that sees `completed` may submit its next batch at once: the budget must be
    # free by then. Here the first release fails (PostgreSQL gone for a moment).
    failed_once = asyncio.Event()

    async def release_failing_once(engine: Any, batch_id: str) -> None:
        if not failed_once.is_set():
            failed_once.set()
            raise DatabaseUnavailable("PostgreSQL went away (injected)")
        await release_batch(engine, batch_id)

    monkeypatch.setattr("workers.batches.finalizer.release_batch", release_failing_once)
    lines = [_line(f"h{i}", f"Held question {i}?") for i in range(5)]
    async with batch_stack(kafka_settings, database_url) as stack:
        sdk = _sdk(stack)
        file_id = await _upload(sdk, lines)
        await set_tenant(stack.engine, "acme", monthly_budget_tokens=1_000_000)
        created = await _create(sdk, file_id)
        await asyncio.wait_for(failed_once.wait(), 40)
        await asyncio.sleep(0.3)  # several tracker ticks
        unfinished = await sdk.batches.retrieve(created.id)
        assert unfinished.status == "finalizing", unfinished
        assert await stack.scalar("SELECT count(*) FROM spend_holds") == 1

        # The claim of the failed attempt goes stale; the next attempt finishes the batch.
        async with stack.engine.begin() as connection:
            await connection.execute(text("UPDATE batches SET claimed_at = NULL"))
        done = await _until(sdk, created.id, FINAL)
        assert done.status == "completed", done
        assert await stack.scalar("SELECT count(*) FROM spend_holds") == 0


async def test_a_file_named_outside_latin_1_downloads_under_its_name(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    name = "données—данные \"q\".jsonl"
    data = _jsonl([_line("a", "hi")])
    async with running_stack(kafka_settings, database_url) as stack:
        sdk = _sdk(stack)
        uploaded = await sdk.files.create(file=(name, data), purpose="batch")
        response = await stack.client.get(f"/v1/files/{uploaded.id}/content",
                                          headers=stack.auth)
        await sdk.close()
    assert response.status_code == 200 and response.content == data
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="donn_es')
    assert "filename*=UTF-8''donn%C3%A9es%E2%80%94" in disposition


def _words(count: int) -> str:
    """A prompt of `count` varied words (tokenizers make short work of repeated ones)."""
    vocabulary = ["".join(random.Random(i).choices(string.ascii_lowercase, k=2 + i % 8))
                  for i in range(5000)]
    rng = random.Random(7)
    return " ".join(rng.choice(vocabulary) for _ in range(count))


async def test_launching_a_large_file_leaves_the_event_loop_free(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tracker shares `sluice ledger`'s event loop, as it shares the test's here. Two
    # 12 MB lines (allowed here) took about 1 s each to parse and count on that loop,
    # stalling the ledger's consumer that long; in a worker thread the loop stays free.
    # (0.5 s is generous: this checks blocking, not speed.)
    monkeypatch.setenv("SLUICE_BATCH_MAX_LINE_BYTES", str(32 * 1024 * 1024))
    checked_on: set[str] = set()
    check = validation.check_line

    def recording_check(*args: Any) -> Any:
        checked_on.add(threading.current_thread().name)
        return check(*args)

    monkeypatch.setattr(validation, "check_line", recording_check)
    prompt = _words(1_800_000)
    lines = [_line(f"big{i}", prompt) for i in range(2)] + [_line("small", "hi")]
    # Over Kafka's limit, the large lines end in the error file: no worker (sharing this
    # loop too) ever counts them.
    limited = kafka_settings.model_copy(update={"max_message_bytes": 1024 * 1024})
    async with batch_stack(kafka_settings, database_url, tracker_kafka=limited) as stack:
        sdk = _sdk(stack)
        file_id = await _upload(sdk, lines, "large.jsonl")
        lag, probing = 0.0, True

        async def probe() -> None:
            nonlocal lag
            while probing:
                started = time.monotonic()
                await asyncio.sleep(0.01)
                lag = max(lag, time.monotonic() - started - 0.01)

        encoding_for_model(MODEL).count("loaded once, before probing")
        prober = asyncio.create_task(probe())
        created = await _create(sdk, file_id)
        launched = await _until(sdk, created.id, FINAL, timeout_s=90)
        probing = False
        await prober
        errors = await _lines(sdk, launched.error_file_id)
    assert launched.status == "completed", launched
    assert sorted(e["custom_id"] for e in errors) == ["big0", "big1"]
    print(f"longest event loop stall while launching: {lag:.3f} s")
    assert lag < 0.5, f"the event loop stalled for {lag:.2f} s"
    assert checked_on and threading.main_thread().name not in checked_on


async def test_a_line_over_the_line_limit_is_answered_in_the_error_file(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_BATCH_MAX_LINE_BYTES", "4096")
    lines = [_line("a", "hi"), _line("long", "x " * 10_000), _line("b", "there")]
    async with batch_stack(kafka_settings, database_url) as stack:
        sdk = _sdk(stack)
        batch = await _until(sdk, (await _create(sdk, await _upload(sdk, lines))).id, FINAL)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
        (error,) = await _lines(sdk, batch.error_file_id)
    assert error["custom_id"] == "long" and error["response"]["status_code"] == 400
    body = error["response"]["body"]["error"]
    assert body["code"] == "request_too_large"
    assert "over the limit of 4096 bytes per batch line" in body["message"]


class RefusingProducer:
    """A producer whose Kafka stops taking messages after the first `after`: `send` raises,
    or (`mode="ack"`) every later message's acknowledgement fails."""

    def __init__(self, producer: Any, after: int, mode: str):
        self._producer = producer
        self._left = after
        self._mode = mode

    async def send(self, topic: str, value: bytes, **options: Any) -> asyncio.Future[Any]:
        if self._left > 0:
            self._left -= 1
            return await self._producer.send(topic, value, **options)
        if self._mode == "send":
            raise KafkaError("the brokers refused the message (injected)")
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed.set_exception(KafkaError("the brokers did not acknowledge (injected)"))
        return failed


async def _published_keys(kafka: KafkaSettings, topic: str) -> list[bytes]:
    """Keys of every message on `topic`, from its beginning."""
    consumer = new_consumer(kafka, client_id="count", group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await partition_ids(kafka, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        return [bytes(record.key or b"") async for record in read_present(consumer, partitions)]
    finally:
        await consumer.stop()


@pytest.mark.parametrize("mode", ["send", "ack"])
async def test_an_interrupted_launch_resumes_instead_of_publishing_again(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    monkeypatch.setattr(launcher, "CHUNK_LINES", 100)
    lines = [_line(f"l{i}", f"Question {i}?") for i in range(250)]
    # No tracker runs: the test launches the batch itself, twice.
    async with running_stack(kafka_settings, database_url) as stack:
        sdk = _sdk(stack)
        created = await _create(sdk, await _upload(sdk, lines))
        files = FileStore(stack.engine, BatchSettings())
        producer = new_producer(kafka_settings, client_id="test-launch")
        await producer.start()
        try:
            refusing = RefusingProducer(producer, after=150, mode=mode)
            first = launcher.Launcher(stack.engine, files, cast(Any, refusing), kafka_settings,
                                      Estimator(demo_config()))
            with pytest.raises(KafkaError):
                await first.launch(await claim(stack.engine, created.id))
            # The first 150 lines are launched; line 151 is where Kafka stopped.
            assert await stack.scalar("SELECT total FROM batches WHERE id = :id",
                                      id=created.id) == 150
            assert await stack.scalar("SELECT status FROM batches WHERE id = :id",
                                      id=created.id) == "validating"
            async with stack.engine.begin() as connection:  # the claim went stale
                await connection.execute(text("UPDATE batches SET claimed_at = NULL"))
            again = launcher.Launcher(stack.engine, files, producer, kafka_settings,
                                      Estimator(demo_config()))
            await again.launch(await claim(stack.engine, created.id))
        finally:
            await producer.stop()
        batch = await sdk.batches.retrieve(created.id)
        assert batch.status in ("in_progress", "completed"), batch
        assert batch.request_counts is not None and batch.request_counts.total == 250
        topic = Topics(kafka_settings.topic_prefix).requests(MODEL, Lane.BATCH)
        keys = await _published_keys(kafka_settings, topic)
        assert len(keys) == 250, f"{len(keys) - len(set(keys))} lines published twice"
        assert set(keys) == {launcher.request_id(created.id, n).encode() for n in range(1, 251)}
