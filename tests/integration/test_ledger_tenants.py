"""Results and usage are matched on tenant and id: a forged record for another tenant's
request (or batch line) changes nothing of it, and is dead-lettered with the reason."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from pydantic import BaseModel
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.tables import batch_requests, batches
from broker.kafka import encode
from broker.stores.requests import get_request
from schemas import RequestStatus, Topics
from tests.integration.test_ledger import MODEL, NOW, record, request, result, usage
from workers.batches.launcher import request_id
from workers.batches.results import record_results
from workers.ledger import plan_batch
from workers.ledger.rows import Record
from workers.ledger.store import write_batch

pytestmark = pytest.mark.integration

TOPICS = Topics("p.")


def _batch(*messages: tuple[str, BaseModel]) -> Any:
    return plan_batch(TOPICS, [record(topic, encode(message), offset=offset)
                               for offset, (topic, message) in enumerate(messages)])


async def _spend(engine: AsyncEngine, scope: str) -> Any:
    async with engine.connect() as connection:
        return await connection.scalar(
            text("SELECT coalesce(sum(spent_usd), 0) FROM spend_accounts WHERE scope = :scope"),
            {"scope": scope})


async def test_a_result_naming_another_tenant_does_not_touch_the_request(
    engine: AsyncEngine,
) -> None:
    victim, same_batch = f"req_v_{uuid.uuid4().hex[:8]}", f"req_s_{uuid.uuid4().hex[:8]}"
    await write_batch(engine, _batch((TOPICS.requests(MODEL), request(victim))))  # acme's

    forged = result(victim, RequestStatus.SUCCEEDED, tenant="mallory")
    forged_usage = usage(request_id=victim, tenant="mallory")
    refused = await write_batch(engine, _batch(
        (TOPICS.results, forged), (TOPICS.usage, forged_usage),
        # Request and forged result in one batch: they do not pair up either.
        (TOPICS.requests(MODEL), request(same_batch)),
        (TOPICS.results, result(same_batch, RequestStatus.FAILED, tenant="mallory"))))

    assert sorted(poison.reason for poison in refused) == sorted([
        f"result for request {victim} names tenant 'mallory', but the request belongs "
        "to tenant 'acme'",
        f"usage for request {victim} names tenant 'mallory', but the request belongs "
        "to tenant 'acme'",
        f"result for request {same_batch} names tenant 'mallory', but the request belongs "
        "to tenant 'acme'"])
    for recorded in (victim, same_batch):
        row = await get_request(engine, recorded)
        assert row is not None
        assert (row.tenant, row.status, row.result) == ("acme", RequestStatus.QUEUED, None)
    async with engine.connect() as connection:
        events = await connection.scalar(text(
            "SELECT count(*) FROM usage_events WHERE request_id = :id"), {"id": victim})
    assert events == 0
    assert await _spend(engine, "tenant:mallory") == 0

    # The request's own result still lands.
    assert await write_batch(engine, _batch(
        (TOPICS.results, result(victim, RequestStatus.SUCCEEDED)))) == []
    row = await get_request(engine, victim)
    assert row is not None and row.status is RequestStatus.SUCCEEDED


async def test_a_batch_line_result_must_be_of_the_batchs_tenant(engine: AsyncEngine) -> None:
    batch_id = f"batch_{uuid.uuid4().hex[:12]}"
    line = request_id(batch_id, 1)

    def line_record(message: BaseModel) -> Record:  # keyed like a worker's result
        value = encode(message)
        return ConsumerRecord(TOPICS.results, 0, 0, 0, 0, line.encode(), value, None,
                              len(line), len(value), ())
    async with engine.begin() as connection:
        await connection.execute(insert(batches).values(
            id=batch_id, tenant="acme", models=[MODEL], endpoint="/v1/chat/completions",
            input_file_id="file_1", completion_window="24h", status="in_progress",
            expires_at=NOW + timedelta(days=1)))
        await connection.execute(insert(batch_requests).values(
            request_id=line, batch_id=batch_id, line=1, custom_id="c1", status="queued"))

    def status() -> Any:
        return select(batch_requests.c.status).where(batch_requests.c.request_id == line)

    forged = result(line, RequestStatus.SUCCEEDED, tenant="mallory")
    await record_results(engine, [line_record(forged)])
    async with engine.connect() as connection:
        assert await connection.scalar(status()) == "queued"

    await record_results(engine, [line_record(result(line, RequestStatus.FAILED))])
    async with engine.connect() as connection:
        assert await connection.scalar(status()) == "failed"
