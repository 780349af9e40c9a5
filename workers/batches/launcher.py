"""Launching a batch: validate every line of its input file, then publish the good ones.

Two passes over the streamed file. The first only checks (and remembers custom ids), so a
batch that fails validation publishes nothing. The second writes one `batch_requests` row
per line, with deterministic request ids (a relaunch after a crash inserts nothing twice),
and publishes each valid line to `<prefix>requests.<model>.batch` with `lane=batch`.

Parsing and token counting run in a worker thread, a chunk of the file at a time
(`workers.batches.validation`): the tracker shares the ledger's event loop.

Lines of a model whose first deployment has `batch: native` are not published: each is
recorded in `native_batch_lines` in the provider's own format (with the ledger's `requests`
row, as no request topic carries it), in the same transaction as its `batch_requests` row,
and once every line is recorded they are put into chunks for the provider's batch API
(`workers.batches.native`). A line that provider cannot express is answered in the error
file instead.

A line may name an alias its key may use (`batch.models` lists it): it is published as a
request of the model serving it, with the caller's A/B or canary variant, as ingress
publishes a direct call (`workers.batches.routing`).

Models that require approval are asked about again at launch (the batch's `models` hold
those approved when it was made): lines of a model whose approval was revoked since are
answered in the error file with the access error's code, as template lines are, and the
rest runs.

A launch resumes. While a batch is `validating`, its `total` counts the lines already
launched: rows written and every message before them acknowledged by Kafka. It grows after
each chunk of lines, and after a failure to the lines before the first one Kafka did not
take. A relaunch (another attempt once the claim is stale) skips validation and admission
when `total` is above 0 — both passed before anything was published — and publishes only
the lines after it, so workers never see (and bill) an earlier line twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Row, case, func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.access import AccessGate
from broker.batches.files import FileRecord, FileStore
from broker.batches.lines import InputLine, LineError, error_envelope
from broker.batches.tables import batch_requests, batches
from broker.config import SluiceConfig
from broker.errors import UnsupportedParameter
from broker.estimates import Estimator
from broker.guardrails.screening import Guardrails, Screening
from broker.kafka import (
    Producer,
    encode,
    fits,
    message_limit,
    topics_for,
)
from broker.settings import KafkaSettings
from broker.signing import service_headers
from broker.stores.access import AccessStore
from broker.stores.database import database_errors
from broker.stores.keys import find_key_limits
from broker.stores.prices import PriceBook, list_prices
from broker.stores.templates import get_templates
from schemas import ChatCompletionRequest, EmbeddingRequest, InferenceRequest, Lane
from workers.batches.approvals import model_refusals, refused_lines
from workers.batches.budget import BatchEstimate, admit_batch, batch_limits
from workers.batches.claims import release
from workers.batches.native import NativeLane
from workers.batches.native.store import record_lines
from workers.batches.routing import BatchRouting
from workers.batches.templated import BatchTemplates
from workers.batches.validation import MAX_ERRORS, LineParser, Validation

log = logging.getLogger("sluice.batches")

CHUNK_LINES = 1000

Outgoing = list[tuple[int, InferenceRequest, bytes, list[tuple[str, bytes]]]]
"""Messages of a chunk of lines: (index of the line in the chunk, message, payload, headers)."""
Native = list[tuple[dict[str, Any], InferenceRequest]]
"""Native lines of a chunk of lines: (`native_batch_lines` row, the line's request)."""


def request_id(batch_id: str, line: int) -> str:
    """The request id of a batch line (also the `id` of its output line)."""
    return f"batch_req_{batch_id.removeprefix('batch_')}_{line}"


class NativeScreening:
    """The model's guardrail policies, applied to lines sent to a provider's batch API.

    Lines on the native lane never reach a worker, which screens every other request: they
    are screened here before they leave, by their model's policies and their key's. Masked
    PII stays masked (restoring needs the worker's in-memory mapping, which a batch API
    does not have); a block answers the line in the error file. Decisions are not
    recorded in `guardrail_events` for these lines.
    """

    def __init__(self, config: SluiceConfig | None) -> None:
        self._guardrails = Guardrails(config.guardrails if config else {})
        self._policies = ({name: model.guardrails for name, model in config.models.items()}
                          if config else {})

    def screen(self, model: str, body: ChatCompletionRequest | EmbeddingRequest,
               key_policies: Sequence[str] = ()) -> Screening:
        """`body` screened by `model`'s policies, then the batch key's (unchanged when
        there are none)."""
        return self._guardrails.screen(body, [*(self._policies.get(model) or ()),
                                              *key_policies])


class Launcher:
    """Validates and publishes `validating` batches; `config` resolves the aliases lines
    name and assigns their variants (None: lines are published under the name they give)."""

    def __init__(self, engine: AsyncEngine, files: FileStore, producer: Producer,
                 kafka: KafkaSettings, estimator: Estimator, native: NativeLane | None = None,
                 screening: NativeScreening | None = None, config: SluiceConfig | None = None):
        self._engine = engine
        self._native = native
        self._screening = screening or NativeScreening(None)
        self._config = config
        self._routing = BatchRouting(config)
        self._estimator = estimator
        self._files = files
        self._producer = producer
        self._kafka = kafka
        self._topics = topics_for(kafka)
        # For templates requiring approval. No cache across launches (each launch asks once
        # per name): an approval must open the next batch at once, not seconds later.
        self._access = AccessGate(AccessStore(engine), ttl_s=0)

    async def launch(self, batch: Row[Any]) -> None:
        """Take a claimed batch to `in_progress` or `failed`, releasing the claim."""
        record = await self._files.get(batch.tenant, batch.input_file_id)
        if record is None:
            await self._fail(batch, [LineError("file_not_found", 0,
                                               "The input file was deleted.", "input_file_id")])
            return
        # One for both passes: they read the same templates, so agree on every line.
        # Lines naming no version render with the versions latest at the batch's creation,
        # on a relaunch too.
        templates = BatchTemplates(
            partial(get_templates, self._engine, as_of=batch.created_at), self._access,
            batch.tenant, batch.api_key_id, as_of=batch.created_at)
        if batch.total == 0:  # else an earlier attempt validated and admitted it
            errors = await self._validate(batch, record, templates)
            if errors is not None:
                await self._fail(batch, errors)
                return
        total = await self._publish(batch, record, templates)
        log.info("batch %s launched: %d lines", batch.id, total)

    async def _validate(self, batch: Row[Any], record: FileRecord,
                        templates: BatchTemplates) -> list[LineError] | None:
        """The first pass and the budget hold: what fails the batch, or None."""
        settings = self._files.settings
        validation = Validation(batch.endpoint, frozenset(batch.models),
                                settings.batch_max_lines, settings.batch_max_line_bytes,
                                BatchEstimate(await self._prices(), self._estimator,
                                              served=self._routing.served))
        complete = True
        async for chunk in self._files.read(record):
            complete = await asyncio.to_thread(validation.feed, chunk)
            if not complete:
                break
            await templates.settle(validation)
        if complete:
            await asyncio.to_thread(validation.end)
            await templates.settle(validation)
        errors = validation.errors()
        if errors is not None:
            return errors
        limits = await batch_limits(self._engine, batch.tenant, batch.api_key_id)
        refusal = await admit_batch(self._engine, batch.id, limits, validation.estimate)
        if refusal is not None:
            return [LineError("insufficient_quota", 0, refusal)]
        log.info("batch %s valid: %d lines, %d valid", batch.id, validation.total,
                 validation.valid)
        return None

    async def _prices(self) -> PriceBook:
        with database_errors(self._engine):
            return PriceBook(await list_prices(self._engine))

    async def _fail(self, batch: Row[Any], errors: list[LineError]) -> None:
        await release(self._engine, batch.id, status="failed", failed_at=func.now(),
                      errors=[e.body() for e in errors[:MAX_ERRORS]])

    async def _publish(self, batch: Row[Any], record: FileRecord,
                       templates: BatchTemplates) -> int:
        """The second pass, from where an earlier attempt stopped; the batch's line count."""
        done = int(batch.total)
        policies = await self._key_policies(batch)
        models = frozenset(batch.models)
        refusals = await model_refusals(self._access, self._config, batch.tenant,
                                        batch.api_key_id, models)
        parser = LineParser(batch.endpoint, models, self._files.settings.batch_max_line_bytes,
                            skip=done)
        pending: list[InputLine] = []
        async for data in self._files.read(record):
            pending += await templates.render(await asyncio.to_thread(parser.feed, data), models)
            while len(pending) >= CHUNK_LINES:
                done = await self._send(batch, refused_lines(pending[:CHUNK_LINES], refusals),
                                        done, policies)
                del pending[:CHUNK_LINES]
        pending += await templates.render(await asyncio.to_thread(parser.end), models)
        if pending:
            done = await self._send(batch, refused_lines(pending, refusals), done, policies)
        if self._native is not None:  # every line is recorded: chunk the native ones
            await self._native.assign(batch.id)
        # A cancel that arrived meanwhile wins: the batch stays `cancelling`.
        launched = batches.c.status == "validating"
        await release(self._engine, batch.id, total=done,
                      status=case((launched, "in_progress"), else_=batches.c.status),
                      in_progress_at=case((launched, func.now()), else_=None))
        return done

    async def _key_policies(self, batch: Row[Any]) -> tuple[str, ...]:
        """The guardrail policies of the key that made the batch (its lines pass them as
        its direct calls would, after their model's own)."""
        if batch.api_key_id is None:
            return ()
        with database_errors(self._engine):
            limits = await find_key_limits(self._engine, batch.api_key_id)
        return limits.guardrails or () if limits is not None else ()

    async def _send(self, batch: Row[Any], lines: list[InputLine], done: int,
                    policies: tuple[str, ...] = ()) -> int:
        """Record and publish `lines`, which follow the first `done`; the lines done now."""
        now = datetime.now(UTC)
        lines, outgoing, native = await asyncio.to_thread(self._messages, batch, lines, now,
                                                          policies)
        rows = [_row(batch.id, line, now) for line in lines]
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                await connection.execute(insert(batch_requests).on_conflict_do_nothing(), rows)
                await record_lines(connection, [row for row, _ in native],
                                   [request for _, request in native])
                # Still ours: a long launch must not look abandoned to another tracker.
                await connection.execute(update(batches).where(batches.c.id == batch.id)
                                         .values(claimed_at=func.now()))
        futures: list[asyncio.Future[Any]] = []
        refused: Exception | None = None
        for _, message, payload, headers in outgoing:
            try:
                futures.append(await self._producer.send(
                    self._topics.requests(message.model, Lane.BATCH), payload,
                    key=message.id.encode(), headers=headers))
            except Exception as exc:  # whatever the client raises: recorded, then raised
                refused = exc
                break
        acks = await asyncio.gather(*futures, return_exceptions=True)
        failed = next((i for i, ack in enumerate(acks) if isinstance(ack, BaseException)), None)
        if failed is None and refused is None:
            await self._progress(batch.id, done + len(lines))
            return done + len(lines)
        # The lines before the first message Kafka did not take are launched. One it took
        # after that is sent again by the relaunch: only the unacknowledged tail repeats.
        first = failed if failed is not None else len(futures)
        await self._progress(batch.id, done + outgoing[first][0])
        error = acks[first] if failed is not None else refused
        assert isinstance(error, BaseException)
        raise error

    def _messages(self, batch: Row[Any], lines: list[InputLine], now: datetime,
                  policies: tuple[str, ...] = ()) -> tuple[list[InputLine], Outgoing, Native]:
        """The signed messages of `lines` (encoding and signing a large line is CPU work: run
        in a thread), the native lines' rows, and the lines, those Kafka (or the native
        lane's provider) could never take now answered in the error file."""
        lines = list(lines)
        outgoing: Outgoing = []
        native: Native = []
        for index, line in enumerate(lines):
            if line.body is None:
                continue
            message = self._routing.resolve(InferenceRequest(
                id=request_id(batch.id, line.line), model=line.body.model, body=line.body,
                tenant=batch.tenant, api_key_id=batch.api_key_id, lane=Lane.BATCH,
                created_at=now, deadline=batch.expires_at, correlation_id=batch.id,
                # The template and version too, for the ledger's `requests` row.
                metadata={"batch_id": batch.id, "custom_id": line.custom_id,
                          **line.metadata()},
                guardrails=list(policies) or None))
            upstream = self._native.upstream_for(message.model) if self._native else None
            if upstream is not None:
                # No worker sees these lines: the model's guardrails screen them here.
                screened = self._screening.screen(message.model, line.body, policies)
                if screened.blocked is not None:
                    lines[index] = replace(line, body=None, problem=screened.blocked.message,
                                           code="guardrail_blocked")
                    continue
                try:
                    encoded = upstream.encode_line(message.id, screened.body, batch.endpoint)
                except UnsupportedParameter as exc:
                    lines[index] = replace(line, body=None, problem=str(exc))
                    continue
                native.append(({"request_id": message.id, "batch_id": batch.id,
                                "deployment": upstream.deployment, "model": message.model,
                                "line": line.line, "bytes": len(encoded),
                                "payload": encoded}, message))
                continue
            message = self._routing.with_variant(message)  # like a direct call's (ingress)
            payload = encode(message)
            # Signed like ingress's: workers serve only proven requests.
            signed = [*self._headers(batch.id), *service_headers(self._kafka, payload)]
            if fits(self._kafka, message.id.encode(), payload, signed):
                outgoing.append((index, message, payload, signed))
            else:  # answered in the error file, like any other line Kafka cannot take
                lines[index] = replace(line, body=None, problem=(
                    f"The request is {len(payload)} bytes once queued, over the Kafka "
                    f"brokers' limit of {message_limit(self._kafka)} bytes "
                    "(message.max.bytes)."), code="request_too_large")
        return lines, outgoing, native

    async def _progress(self, batch_id: str, done: int) -> None:
        """Record that the first `done` lines are launched (a relaunch starts after them)."""
        with database_errors(self._engine):
            async with self._engine.begin() as connection:
                await connection.execute(update(batches).where(batches.c.id == batch_id)
                                         .values(total=done, claimed_at=func.now()))

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
