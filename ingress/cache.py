"""The response cache at the edge: answer a repeated request before admission and Kafka.

For a chat request to a model with `cache:` on, after authentication and validation:

1. exact: the request's key (`broker.caching.keys`) in the in-process LRU, else in
   PostgreSQL; a hit is answered at once (`x-sluice-cache: hit`), streamed when the
   request asked for a stream;
2. semantic (`cache.semantic`): the last user turn's vector (computed in a thread, never
   on the event loop) against the in-process index of the same tenant, model and
   conversation rest; the best match at or above the threshold is answered
   (`semantic-hit`);
3. otherwise a miss (`miss`): the request goes on, carrying a `CacheTicket` so the ledger
   keeps its answer.

`Cache-Control: no-cache` skips 1 and 2 (the answer is still kept); `no-store` keeps
nothing (a hit is still served). Requests that do not wait for their answer
(`Prefer: respond-async`) are never answered from the cache, only kept. A hit costs the
caller nothing: it is not admitted (no rate-limit count, no budget hold) and is recorded
in the ledger, after the answer, as a call of provider `cache` with zero cost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from broker.caching.answers import AnswerLRU, CachedAnswer
from broker.caching.config import SemanticCacheConfig
from broker.caching.index import SemanticIndex, Vector, vector_to_text
from broker.caching.keys import exact_key, semantic_parts
from broker.config import SluiceConfig
from broker.errors import ConfigError, SluiceError
from broker.routing import resolve_alias
from broker.stores.response_cache import CacheHit, find_answer, record_hits, vectors_since
from ingress.envelope import json_response
from ingress.services import Principal
from schemas import ChatCompletion, ChatCompletionRequest
from schemas.caching import CacheTicket
from schemas.streaming import SSE_DONE, sse_event, stream_chunks

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    # Optional (the `semantic` extra): imported when a model first needs a vector.
    from broker.caching.embedding import SentenceEmbedder

log = logging.getLogger("sluice.ingress.cache")

CACHE_HEADER = "x-sluice-cache"


def cache_directives(header: str | None) -> frozenset[str]:
    """The directives of a `Cache-Control` request header, lower-cased, values dropped."""
    if not header:
        return frozenset()
    return frozenset(part.split("=", 1)[0].strip().lower()
                     for part in header.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """What the cache made of a request: a ready answer, or how to keep the coming one."""

    response: Response | None = None
    """A hit's answer: send it and stop."""
    ticket: CacheTicket | None = None
    """A miss whose answer the ledger should keep (None: keep nothing)."""
    cached_model: bool = False
    """Whether the model has caching on (then every answer says hit or miss)."""

    def mark(self, response: Response) -> Response:
        """`response` with `x-sluice-cache: miss` when the model caches."""
        if self.cached_model:
            response.headers[CACHE_HEADER] = "miss"
        return response


UNCACHED = CacheLookup()


class HitRecorder:
    """Writes hits to the ledger tables in the background, coalesced into batches."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._pending: list[CacheHit] = []
        self._flushing: asyncio.Task[None] | None = None

    def add(self, hit: CacheHit) -> None:
        """Record `hit` soon (its answer has been sent already)."""
        self._pending.append(hit)
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                hits, self._pending = self._pending, []
                try:
                    await record_hits(self._engine, hits)
                except Exception:  # a background task: log, never vanish silently
                    log.exception("could not record %d cache hits in the ledger", len(hits))
        finally:
            # No await between the empty check and here: an `add` meanwhile is impossible.
            self._flushing = None

    async def close(self) -> None:
        """Wait for the hits not yet written."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)


class ResponseCache:
    """Looks requests up in the response cache and answers hits.

    Args:
        config: the models and their `cache:` settings.
        engine: the ledger database; None turns the cache off (no place to keep answers).
    """

    def __init__(self, config: SluiceConfig, engine: AsyncEngine | None):
        self._config = config
        self._engine = engine
        self._answers = AnswerLRU()
        self._recorder = HitRecorder(engine) if engine is not None else None
        self._index = SemanticIndex()
        self._embedder: SentenceEmbedder | None = None
        self._embedder_lock = asyncio.Lock()
        self._embedder_missing = False
        # One thread: embeddings are CPU-bound; more threads would only contend for the
        # same cores, and the default executor stays free for everything else.
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-embed")

    async def lookup(self, request: Request, principal: Principal, body: ChatCompletionRequest,
                     *, answer: bool) -> CacheLookup:
        """A hit's response, or the ticket of a miss. `answer` False (a request that does
        not wait for its answer): never a hit, only a ticket."""
        served = resolve_alias(self._config, body.model)  # an alias: its model's cache
        model = self._config.models.get(served)
        settings = model.cache if model is not None else None
        if (settings is None or model is None or model.kind != "chat" or self._engine is None
                or not (principal.may_use(body.model) or principal.may_use(served))):
            return UNCACHED
        started = time.perf_counter()
        created = datetime.now(UTC)
        directives = cache_directives(request.headers.get("cache-control"))
        tenant = principal.tenant
        # The model's policies and the key's: an answer screened by other policies (a
        # policy added or removed since) is not this request's answer.
        policies = (*model.guardrails, *(principal.guardrails or ()))
        key = exact_key(tenant, body, policies=policies)
        parts = (semantic_parts(tenant, body, policies=policies)
                 if settings.semantic is not None else None)
        vector: Vector | None = None
        try:
            if answer and "no-cache" not in directives:
                found = await self._exact(tenant, key)
                kind = "hit"
                if found is None and parts is not None and settings.semantic is not None:
                    vector = await self._embed(parts.last_user_text)
                    if vector is not None:
                        scope = (tenant, served, parts.rest_hash)
                        found = await self._similar(scope, vector, settings.semantic)
                        kind = "semantic-hit"
                if found is not None:
                    return CacheLookup(self._replay(principal, body, found, kind, created,
                                                    started), cached_model=True)
            if "no-store" in directives:
                return CacheLookup(cached_model=True)
            if parts is not None and vector is None:  # for the ledger to keep
                vector = await self._embed(parts.last_user_text)
        except SluiceError as exc:  # the database away: a miss, and the request goes on
            log.warning("response cache unavailable (%s); treating as a miss", exc)
            return CacheLookup(cached_model=True)
        rest_hash = parts.rest_hash if parts is not None and vector is not None else None
        ticket = CacheTicket(key=key, ttl_s=settings.ttl_s, rest_hash=rest_hash,
                             embedding=vector_to_text(vector) if vector is not None else None)
        return CacheLookup(ticket=ticket, cached_model=True)

    async def _exact(self, tenant: str, key: str) -> CachedAnswer | None:
        answer = self._answers.get(key)
        if answer is not None and answer.tenant == tenant:
            return answer
        assert self._engine is not None
        answer = await find_answer(self._engine, tenant, key)
        if answer is not None:
            self._answers.put(answer)
        return answer

    async def _similar(self, scope: tuple[str, str, str], vector: Vector,
                       settings: SemanticCacheConfig) -> CachedAnswer | None:
        vectors = self._index.scope(scope)
        now = datetime.now(UTC)
        match = vectors.best(vector, settings.threshold, now)
        if match is None:  # perhaps answered since the scope was read: top it up
            assert self._engine is not None
            rows = await vectors_since(self._engine, scope, vectors.loaded_until,
                                       settings.max_entries)
            vectors.add(rows, settings.max_entries)
            match = vectors.best(vector, settings.threshold, now)
        if match is None:
            return None
        return await self._exact(scope[0], match[0])

    async def _embed(self, text: str) -> Vector | None:
        """The vector of `text`, computed in the embedding thread; None when the model is
        not installed (the semantic cache is then off, logged once; exact goes on)."""
        embedder = await self._load_embedder()
        if embedder is None:
            return None
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._threads, embedder.embed, [text])
        result: Vector = vectors[0]
        return result

    async def _load_embedder(self) -> SentenceEmbedder | None:
        async with self._embedder_lock:
            if self._embedder is None and not self._embedder_missing:
                from broker.caching.embedding import SentenceEmbedder
                loop = asyncio.get_running_loop()
                try:
                    self._embedder = await loop.run_in_executor(self._threads,
                                                                SentenceEmbedder.load)
                except ConfigError as exc:
                    log.error("semantic cache off: %s", exc)
                    self._embedder_missing = True
            return self._embedder

    def _replay(self, principal: Principal, body: ChatCompletionRequest,
                answer: CachedAnswer, kind: str, created: datetime,
                started: float) -> Response:
        """The cached answer under a new request id, as JSON or as a stream; recorded."""
        request_id = f"req_{uuid.uuid4().hex}"
        completion: dict[str, Any] = {**answer.completion, "id": request_id}
        headers = {"x-request-id": request_id, CACHE_HEADER: kind}
        response: Response
        if body.stream:
            chunks = stream_chunks(ChatCompletion.model_validate(completion),
                                   include_usage=body.wants_stream_usage())
            headers["cache-control"] = "no-cache"
            response = StreamingResponse(_sse(chunks), media_type="text/event-stream",
                                         headers=headers)
        else:
            response = json_response(completion, headers=headers)
        if self._recorder is not None:
            self._recorder.add(CacheHit(
                request_id=request_id, tenant=principal.tenant,
                api_key_id=principal.api_key_id, answer=answer, kind=kind,
                created_at=created, finished_at=datetime.now(UTC),
                latency_ms=(time.perf_counter() - started) * 1000))
        return response

    async def close(self) -> None:
        """Finish recording hits and stop the embedding thread."""
        if self._recorder is not None:
            await self._recorder.close()
        self._threads.shutdown(wait=False)


async def _sse(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield sse_event(chunk)
    yield SSE_DONE
