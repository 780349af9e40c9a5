"""Each batch line's final answer, from `<prefix>results` into `batch_requests`.

Only results whose request id is a batch line's are looked at. The update applies to a line
still `queued`, so a redelivered or duplicate result changes nothing, and offsets are
committed only after the database commit (at-least-once delivery, one effect).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.lines import answer_of
from broker.batches.tables import batch_requests
from broker.database import database_errors
from broker.errors import PoisonMessage, SluiceError
from broker.kafka import (
    Consumer,
    KafkaError,
    decode,
)
from schemas import InferenceResult
from workers.ledger.rows import Record, commit_positions
from workers.ledger.service import rewind

log = logging.getLogger("sluice.batches")

PREFIX = b"batch_req_"

_RECORD = (
    update(batch_requests)
    .where(batch_requests.c.request_id == bindparam("b_id"), batch_requests.c.status == "queued")
    .values(status=bindparam("b_status"), status_code=bindparam("b_code"),
            body=bindparam("b_body", type_=batch_requests.c.body.type),
            finished_at=bindparam("b_finished"))
)


def line_updates(records: list[Record]) -> list[dict[str, Any]]:
    """Parameters of `_RECORD` for the batch lines among `records` (others are skipped)."""
    updates: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.key is not None and not bytes(record.key).startswith(PREFIX):
            continue  # not a batch line: skip without parsing its JSON
        try:
            result = decode(InferenceResult, record)
        except PoisonMessage:
            continue  # the ledger dead-letters poison on this topic; nothing to do here
        if not result.request_id.startswith(PREFIX.decode()) or result.request_id in updates:
            continue  # the first final result of a request is the one that counts
        status, code, body = answer_of(result)
        updates[result.request_id] = {"b_id": result.request_id, "b_status": status,
                                      "b_code": code, "b_body": body,
                                      "b_finished": result.finished_at}
    return list(updates.values())


async def record_results(engine: AsyncEngine, consumer: Consumer,
                         records: list[Record]) -> bool:
    """Write one poll's batch-line answers, then commit; False (and rewound) on failure."""
    updates = line_updates(records)
    try:
        if updates:
            with database_errors(engine):
                async with engine.begin() as connection:
                    await connection.execute(_RECORD, updates)
    except (SluiceError, SQLAlchemyError, OSError) as exc:  # re-read the poll later
        log.warning("batches: recording %d results failed (%s); will retry", len(updates), exc)
        rewind(consumer, records)
        return False
    assigned = consumer.assignment()
    positions = {tp: at for tp, at in commit_positions(records).items() if tp in assigned}
    if positions:
        try:
            await consumer.commit(positions)
        except KafkaError as exc:  # a rebalance; the new owner re-reads with no effect
            log.info("batches: offset commit failed (%s)", exc)
    return True
