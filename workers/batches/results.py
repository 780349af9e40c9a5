"""Each batch line's final answer, from `<prefix>results` into `batch_requests`.

Only results whose request id is a batch line's are looked at. The update applies to a line
still `queued` of a batch of the result's tenant (a result naming another tenant is logged
and changes nothing: batch ids are not secrets to every producer), so a redelivered or
duplicate result changes nothing either, and offsets are
committed only after the database commit (`broker.kafka.ApplyLoop`: at-least-once
delivery, one effect).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import bindparam, exists, update
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.lines import answer_of
from broker.batches.tables import batch_requests, batches
from broker.errors import PoisonMessage
from broker.kafka import Record, decode
from broker.stores.database import database_errors
from schemas import InferenceResult

log = logging.getLogger("sluice.batches")

PREFIX = b"batch_req_"

_RECORD = (
    update(batch_requests)
    .where(batch_requests.c.request_id == bindparam("b_id"), batch_requests.c.status == "queued",
           exists().where(batches.c.id == batch_requests.c.batch_id,
                          batches.c.tenant == bindparam("b_tenant")))
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
                                      "b_finished": result.finished_at,
                                      "b_tenant": result.tenant}
    return list(updates.values())


async def record_results(engine: AsyncEngine, records: list[Record]) -> None:
    """Write one poll's batch-line answers in one transaction (`ApplyLoop` commits after).

    Raises:
        DatabaseUnavailable: PostgreSQL could not take them; the loop reads them again.
    """
    updates = line_updates(records)
    if updates:
        with database_errors(engine):
            async with engine.begin() as connection:
                changed = (await connection.execute(_RECORD, updates)).rowcount
        if 0 <= changed < len(updates):  # redelivered (already final), or another tenant's
            log.info("%d of %d batch-line results changed nothing (already final, or naming "
                     "another tenant than the batch's)", len(updates) - changed, len(updates))
