"""The native lane: batch lines sent to the provider's own batch API, followed to the end.

A model whose first deployment has `batch: native` (and an upstream client here) has its
batch lines recorded by the launcher in `native_batch_lines` instead of published to its
batch topic. At the end of the launch they are put into chunks within the provider's limits
(`assign`); each `tick` then moves every chunk one step:

- pending → submitting → running: `submit_started_at` is committed, then the chunk is sent
  (OpenAI: file upload, whose id is recorded, then batch creation with our chunk id in its
  metadata; Anthropic: one Message Batches call) and the upstream id recorded.
- A chunk left `submitting` (a crash, or a timeout, after the call may have reached the
  provider) is looked for upstream before anything is sent again: OpenAI's metadata names
  the chunk, so the listing finds it exactly; Anthropic batches carry no metadata, so a
  batch of the same size created since the first attempt, followed by no other chunk, is
  taken for it — two such candidates fail the chunk rather than guess. Only when the
  provider shows none is the chunk sent again: it cannot have it.
- running → ended: the upstream batch is polled every `native_batch_poll_interval_s`; once
  our batch is cancelling, cancelled or expired it is cancelled upstream (once).
- ended → done: every line's final result goes to `<prefix>results` and, when it consumed
  tokens, a `UsageEvent(service_tier="batch")` to `<prefix>usage` (`answers`); lines the
  upstream never answered end expired, cancelled or failed as the batch did. The batch
  tracker's results consumer and finalizer then write our files, the ledger the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from broker.batches.settings import BatchSettings
from broker.config import SluiceConfig
from broker.errors import ProviderError, ProviderRejected
from broker.kafka import Producer, encode, fits, message_limit, result_headers, wait_all
from broker.settings import KafkaSettings
from schemas import ErrorInfo, InferenceResult, RequestStatus, Topics, UsageEvent
from workers.batches.native import store
from workers.batches.native.answers import LineContext, final_messages, unanswered
from workers.batches.native.upstream import BatchUpstream, ChunkToSend

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

    from workers.batches.native.store import AnyRow

log = logging.getLogger("sluice.batches.native")

PAGE = 1000
STOPPING = frozenset({"cancelling", "cancelled", "expired"})
"""Statuses of our batch in which its upstream batches are no longer wanted."""
Message = tuple[InferenceResult, UsageEvent | None]
Step = Callable[["AnyRow", BatchUpstream], Awaitable[None]]


def native_routes(config: SluiceConfig | None,
                  upstreams: Mapping[str, BatchUpstream]) -> dict[str, BatchUpstream]:
    """The upstream of each model whose first deployment is native and has a client."""
    routes: dict[str, BatchUpstream] = {}
    if config is None:
        return routes
    for model, spec in config.models.items():
        first = spec.deployments[0]
        if config.deployments[first].batch != "native":
            continue
        if first in upstreams:
            routes[model] = upstreams[first]
        else:
            log.warning("deployment %r has batch: native but the batch tracker has no "
                        "client for it; batch lines of %r go to its batch topic", first, model)
    return routes


class NativeLane:
    """Submits, follows and answers the native chunks of every batch.

    Args:
        engine: the ledger database (migrated).
        routes: each native model's upstream (`native_routes`).
        settings: chunk limits and the poll interval.
        producer: publishes results and usage events.
        kafka: topic prefix and message size limit.
        topics: where results and usage go.
    """

    def __init__(self, engine: AsyncEngine, routes: Mapping[str, BatchUpstream],
                 settings: BatchSettings, producer: Producer, kafka: KafkaSettings,
                 topics: Topics):
        self._engine = engine
        self._routes = dict(routes)
        self._upstreams = {u.deployment: u for u in routes.values()}
        self._settings = settings
        self._producer = producer
        self._kafka = kafka
        self._topics = topics
        self._interval = timedelta(seconds=settings.native_batch_poll_interval_s)

    def upstream_for(self, model: str) -> BatchUpstream | None:
        """The upstream that serves `model`'s batch lines, or None (the queue lane)."""
        return self._routes.get(model)

    def limits(self, upstream: BatchUpstream) -> tuple[str, int, int]:
        """(provider, most lines, most bytes) of one chunk for `upstream`."""
        lines = min(self._settings.native_batch_chunk_lines or upstream.max_lines,
                    upstream.max_lines)
        size = min(self._settings.native_batch_chunk_bytes or upstream.max_bytes,
                   upstream.max_bytes)
        return upstream.provider, lines, size

    async def assign(self, batch_id: str) -> None:
        """Put a launched batch's native lines into chunks (the caller holds its claim)."""
        if self._upstreams:
            limits = {name: self.limits(u) for name, u in self._upstreams.items()}
            made = await store.assign_chunks(self._engine, batch_id, limits)
            if made:
                log.info("batch %s: %d upstream batches to submit", batch_id, made)

    async def tick(self) -> None:
        """Move every chunk that can move one step."""
        if not self._upstreams:
            return
        now = datetime.now(UTC)
        for chunk in await store.chunks_in(self._engine, "pending", "submitting"):
            await self._step(chunk, self._submit)
        for chunk in await store.chunks_in(self._engine, "running"):
            cancel = chunk.batch_status in STOPPING and chunk.cancel_sent_at is None
            if cancel or chunk.polled_at is None or chunk.polled_at + self._interval <= now:
                await self._step(chunk, self._follow)
        for chunk in await store.chunks_in(self._engine, "ended"):
            await self._step(chunk, self._publish)

    async def _step(self, chunk: AnyRow, step: Step) -> None:
        upstream = self._upstreams.get(chunk.deployment)
        if upstream is None:
            log.warning("chunk %s: no client for deployment %r any more; left as it is",
                        chunk.id, chunk.deployment)
            return
        if not await store.claim_chunk(self._engine, chunk.id):
            return
        try:
            await step(chunk, upstream)
        except ProviderError as exc:  # the provider's trouble: the next tick tries again
            log.warning("chunk %s (%s): %s", chunk.id, chunk.state, exc)
        except Exception:  # an answer we cannot read: logged, tried again next tick; one
            # chunk's surprise must not stop the tracker (and every other batch) with it
            log.exception("chunk %s (%s): unexpected error; trying again next tick",
                          chunk.id, chunk.state)
        finally:
            await store.update_chunk(self._engine, chunk.id, release=True)

    async def _submit(self, chunk: AnyRow, upstream: BatchUpstream) -> None:
        if chunk.state == "submitting":
            found = await self._find(chunk, upstream)
            if found is not None:
                if found:
                    await store.record_submitted(self._engine, chunk.id, found)
                return
        if chunk.batch_status in STOPPING:  # never sent: its lines end with our batch
            await self._end(chunk, None)
            return
        if chunk.batch_status != "in_progress":
            return
        if chunk.state == "pending":
            await store.update_chunk(self._engine, chunk.id, state="submitting",
                                     now=("submit_started_at",))

        async def on_file(file_id: str) -> None:
            await store.update_chunk(self._engine, chunk.id, upstream_file_id=file_id)

        payloads = await store.chunk_payloads(self._engine, chunk.id)
        try:
            upstream_id = await upstream.submit(ChunkToSend(
                chunk.id, chunk.endpoint, payloads, chunk.upstream_file_id), on_file)
        except ProviderRejected as exc:  # refused for good: nothing was created
            await self._end(chunk, "failed", str(exc))
            return
        await store.record_submitted(self._engine, chunk.id, upstream_id)
        log.info("chunk %s of batch %s: %d lines submitted as %s", chunk.id, chunk.batch_id,
                 chunk.lines, upstream_id)

    async def _find(self, chunk: AnyRow, upstream: BatchUpstream) -> str | None:
        """The upstream id of a chunk that may have been sent: its id, None when the
        provider has no such batch (send it), or "" when the chunk was ended instead."""
        since = chunk.submit_started_at or chunk.created_at
        candidates = await upstream.find(chunk.id, chunk.lines, since)
        known = await store.recorded_upstream_ids(self._engine, candidates)
        candidates = [c for c in candidates if c not in known]
        if len(candidates) == 1:
            log.info("chunk %s: found its upstream batch %s", chunk.id, candidates[0])
            return candidates[0]
        if not candidates:
            return None
        await self._end(chunk, "failed", (
            f"the tracker lost the provider's answer and {len(candidates)} upstream batches "
            f"({', '.join(candidates)}) could be this one; none was taken, so no line is "
            "billed twice"))
        return ""

    async def _follow(self, chunk: AnyRow, upstream: BatchUpstream) -> None:
        batch = await upstream.get(chunk.upstream_batch_id)
        if batch.outcome is None and chunk.batch_status in STOPPING \
                and chunk.cancel_sent_at is None:
            await upstream.cancel(batch.id)
            await store.update_chunk(self._engine, chunk.id, now=("cancel_sent_at",))
            log.info("chunk %s: upstream batch %s cancelled", chunk.id, batch.id)
        if batch.outcome is not None:
            await self._end(chunk, batch.outcome, batch.error)
        await store.update_chunk(self._engine, chunk.id, now=("polled_at",))

    async def _end(self, chunk: AnyRow, outcome: str | None, error: str | None = None) -> None:
        await store.update_chunk(self._engine, chunk.id, state="ended", upstream_status=outcome,
                                 error=error, now=("ended_at",))

    async def _publish(self, chunk: AnyRow, upstream: BatchUpstream) -> None:
        contexts = {row.request_id: LineContext(
            request_id=row.request_id, model=row.model, tenant=chunk.tenant,
            api_key_id=chunk.api_key_id, batch_id=chunk.batch_id, deployment=chunk.deployment,
            provider=chunk.provider, created_at=row.created_at, submitted_at=chunk.submitted_at)
            for row in await store.chunk_lines(self._engine, chunk.id)}
        waiting = set(contexts)
        page: list[Message] = []
        if chunk.upstream_batch_id is not None:
            batch = await upstream.get(chunk.upstream_batch_id)
            async for answer in upstream.answers(batch):
                if answer.custom_id in waiting:  # a line of ours, answered once
                    waiting.discard(answer.custom_id)
                    if (chunk.batch_status == "expired"
                            and answer.status is RequestStatus.CANCELLED):
                        # Cancelled upstream because our batch's window closed.
                        answer = replace(answer, status=RequestStatus.EXPIRED)
                    page.append(final_messages(contexts[answer.custom_id], answer))
                if len(page) >= PAGE:
                    await self._send(page)
                    page = []
        for request_id in sorted(waiting):
            answer = unanswered(request_id, chunk.upstream_status, chunk.batch_status,
                                chunk.error)
            page.append(final_messages(contexts[request_id], answer))
            if len(page) >= PAGE:
                await self._send(page)
                page = []
        await self._send(page)
        await store.update_chunk(self._engine, chunk.id, state="done", now=("done_at",))
        log.info("chunk %s: %d answers published (%d the upstream never gave)", chunk.id,
                 len(contexts), len(waiting))

    async def _send(self, messages: list[Message]) -> None:
        """Publish results and usage events and wait for every acknowledgement."""
        futures = []
        for result, usage in messages:
            key = result.request_id.encode()
            headers = result_headers(result.tenant, False)
            payload = encode(result)
            if not fits(self._kafka, key, payload, headers):
                payload = encode(self._too_large(result, len(payload)))
            futures.append(await self._producer.send(self._topics.results, payload, key=key,
                                                     headers=headers))
            if usage is not None:  # billed whatever became of the answer
                futures.append(await self._producer.send(
                    self._topics.usage, encode(usage), key=usage.tenant.encode()))
        await wait_all(futures)

    def _too_large(self, result: InferenceResult, size: int) -> InferenceResult:
        error = ErrorInfo(
            type="upstream_error", code="result_too_large",
            message=f"The answer is {size} bytes, over the Kafka brokers' limit of "
                    f"{message_limit(self._kafka)} bytes (message.max.bytes), so it cannot "
                    "be delivered. Ask for a shorter answer (max_tokens).")
        return result.model_copy(update={"status": RequestStatus.FAILED, "completion": None,
                                         "error": error})
