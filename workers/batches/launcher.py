"""Launching a batch: validate every line of its input file, then publish the good ones.

Two passes over the streamed file. The first only checks (and remembers custom ids), so a
batch that fails validation publishes nothing. The second writes one `batch_requests` row
per line, with deterministic request ids (a relaunch after a crash inserts nothing twice),
and publishes each valid line to `<prefix>requests.<model>.batch` with `lane=batch`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, case, func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.files import FileStore
from broker.batches.lines import InputLine, LineError, error_envelope, parse_line, split_lines
from broker.batches.tables import batch_requests, batches
from broker.estimates import Estimator
from broker.kafka import (
    Producer,
    encode,
    fits,
    message_limit,
    topics_for,
    wait_all,
)
from broker.settings import KafkaSettings
from broker.stores.database import database_errors
from broker.stores.prices import PriceBook, list_prices
from schemas import InferenceRequest, Lane
from workers.batches.budget import BatchEstimate, admit_batch, batch_limits
from workers.batches.claims import release

log = logging.getLogger("sluice.batches")

CHUNK_LINES = 1000
MAX_ERRORS = 100


def request_id(batch_id: str, line: int) -> str:
    """The request id of a batch line (also the `id` of its output line)."""
    return f"batch_req_{batch_id.removeprefix('batch_')}_{line}"


class Launcher:
    """Validates and publishes `validating` batches."""

    def __init__(self, engine: AsyncEngine, files: FileStore, producer: Producer,
                 kafka: KafkaSettings, estimator: Estimator):
        self._engine = engine
        self._estimator = estimator
        self._files = files
        self._producer = producer
        self._kafka = kafka
        self._topics = topics_for(kafka)

    async def launch(self, batch: Row[Any]) -> None:
        """Take a claimed batch to `in_progress` or `failed`, releasing the claim."""
        record = await self._files.get(batch.tenant, batch.input_file_id)
        if record is None:
            await self._fail(batch, [LineError("file_not_found", 0,
                                               "The input file was deleted.", "input_file_id")])
            return
        models = frozenset(batch.models)
        limit = self._files.settings.batch_max_lines
        # Both lists are capped: a 50,000-line file with a wrong url needs 100 examples, not
        # 50,000. `fatal_seen` still fails the batch when the cap dropped every fatal one.
        fatal: list[LineError] = []
        invalid: list[LineError] = []
        seen: set[str] = set()
        estimate = BatchEstimate(await self._prices(), self._estimator)
        total = valid = 0
        fatal_seen = False
        async for number, raw in split_lines(self._files.read(record)):
            total += 1
            if total > limit:
                fatal.append(LineError("too_many_lines", number,
                                       f"The file has more than {limit} lines."))
                break
            parsed = parse_line(number, raw, batch.endpoint, models)
            if isinstance(parsed, InputLine) and parsed.custom_id in seen:
                parsed = LineError("duplicate_custom_id", number, "The custom_id "
                                   f"'{parsed.custom_id}' is not unique in the file.",
                                   "custom_id")
            if isinstance(parsed, LineError):
                fatal_seen = True
                if len(fatal) < MAX_ERRORS:
                    fatal.append(parsed)
                continue
            seen.add(parsed.custom_id)
            if parsed.body is not None:
                valid += 1
                estimate.add(parsed.body)
            elif len(invalid) < MAX_ERRORS:
                # Reported in `errors` only if no line at all is valid (else: error file).
                invalid.append(LineError("invalid_request", number, parsed.problem or "",
                                         "body"))
        if total == 0:
            fatal = [LineError("empty_file", 0, "The input file has no lines.")]
        if fatal or fatal_seen or valid == 0:
            await self._fail(batch, fatal or invalid)
            return
        limits = await batch_limits(self._engine, batch.tenant, batch.api_key_id)
        refusal = await admit_batch(self._engine, batch.id, limits, estimate)
        if refusal is not None:
            await self._fail(batch, [LineError("insufficient_quota", 0, refusal)])
            return
        await self._publish(batch, record)
        log.info("batch %s launched: %d lines, %d valid", batch.id, total, valid)

    async def _prices(self) -> PriceBook:
        with database_errors(self._engine):
            return PriceBook(await list_prices(self._engine))

    async def _fail(self, batch: Row[Any], errors: list[LineError]) -> None:
        await release(self._engine, batch.id, status="failed", failed_at=func.now(),
                      errors=[e.body() for e in errors[:MAX_ERRORS]])

    async def _publish(self, batch: Row[Any], record: Any) -> None:
        models = frozenset(batch.models)
        chunk: list[InputLine] = []
        total = 0
        async for number, raw in split_lines(self._files.read(record)):
            parsed = parse_line(number, raw, batch.endpoint, models)
            assert isinstance(parsed, InputLine)  # the first pass refused everything else
            chunk.append(parsed)
            total += 1
            if len(chunk) >= CHUNK_LINES:
                await self._send(batch, chunk)
                chunk = []
        if chunk:
            await self._send(batch, chunk)
        # A cancel that arrived meanwhile wins: the batch stays `cancelling`.
        launched = batches.c.status == "validating"
        await release(self._engine, batch.id, total=total,
                      status=case((launched, "in_progress"), else_=batches.c.status),
                      in_progress_at=case((launched, func.now()), else_=None))

    async def _send(self, batch: Row[Any], lines: list[InputLine]) -> None:
        now = datetime.now(UTC)
        outgoing: list[tuple[InferenceRequest, bytes]] = []
        for index, line in enumerate(lines):
            if line.body is None:
                continue
            message = InferenceRequest(
                id=request_id(batch.id, line.line), model=line.body.model, body=line.body,
                tenant=batch.tenant, api_key_id=batch.api_key_id, lane=Lane.BATCH,
                created_at=now, deadline=batch.expires_at, correlation_id=batch.id,
                metadata={"batch_id": batch.id, "custom_id": line.custom_id})
            payload = encode(message)
            if fits(self._kafka, message.id.encode(), payload, self._headers(batch.id)):
                outgoing.append((message, payload))
            else:  # answered in the error file, like any other line Kafka cannot take
                lines[index] = replace(line, body=None, problem=(
                    f"The request is {len(payload)} bytes once queued, over the Kafka "
                    f"brokers' limit of {message_limit(self._kafka)} bytes "
                    "(message.max.bytes)."), code="request_too_large")
        rows = [_row(batch.id, line, now) for line in lines]
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                await connection.execute(insert(batch_requests).on_conflict_do_nothing(), rows)
                # Still ours: a long launch must not look abandoned to another tracker.
                await connection.execute(update(batches).where(batches.c.id == batch.id)
                                         .values(claimed_at=func.now()))
        futures = [
            await self._producer.send(
                self._topics.requests(message.model, Lane.BATCH), payload,
                key=message.id.encode(), headers=self._headers(batch.id))
            for message, payload in outgoing
        ]
        await wait_all(futures)

    @staticmethod
    def _headers(batch_id: str) -> list[tuple[str, bytes]]:
        return [("correlation_id", batch_id.encode())]


def _row(batch_id: str, line: InputLine, now: datetime) -> dict[str, Any]:
    if line.body is not None:
        return {"request_id": request_id(batch_id, line.line), "batch_id": batch_id,
                "line": line.line, "custom_id": line.custom_id, "status": "queued",
                "status_code": None, "body": None, "finished_at": None}
    return {"request_id": request_id(batch_id, line.line), "batch_id": batch_id,
            "line": line.line, "custom_id": line.custom_id, "status": "failed",
            "status_code": 400, "finished_at": now,
            "body": error_envelope(line.problem or "invalid request", "invalid_request_error",
                                   code=line.code)}
