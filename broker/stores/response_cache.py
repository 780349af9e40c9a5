"""The response cache in PostgreSQL: answers kept by the ledger, read and recorded by ingress.

- The ledger keeps the answer of every succeeded result that carries a `CacheTicket`
  (`keep_answers`), in its own transaction after the batch's rows: off the request path,
  and idempotent (a redelivered result writes the same row again).
- Ingress reads an answer by key (`find_answer`), a scope's vectors for the semantic
  index (`vectors_since`), and records each hit (`record_hits`) as the ledger would record
  a call: a `requests` row (succeeded) and a `usage_events` row with provider `cache`, zero
  tokens and cost, and the tokens the original call used in `saved_*_tokens`.

A row is only ever served to its own tenant: every read filters on it, and a write never
replaces another tenant's row (a Kafka-native producer naming someone else's key only
fails to cache its own answer).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.caching.answers import CachedAnswer
from broker.caching.index import Scope, StoredVector, vector_from_bytes, vector_from_text
from broker.stores.database import database_errors
from broker.stores.tables import requests, response_cache, usage_events
from schemas import ChatCompletion, InferenceResult, Lane, RequestStatus

CACHE_PROVIDER = "cache"
"""`provider` and `deployment` of a call answered from the cache."""
LATE_COMMIT_MARGIN = timedelta(seconds=30)
"""How far back a top-up of a scope looks before its newest row: a row's `created_at` is
its transaction's start, so one committed late can be older than a row already read."""
EXPIRED_SWEEP_ROWS = 500

log = logging.getLogger("sluice.cache")


async def find_answer(engine: AsyncEngine, tenant: str, key: str) -> CachedAnswer | None:
    """The unexpired answer of `tenant` under `key`, or None.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    table = response_cache
    statement = select(
        table.c.key, table.c.tenant, table.c.model, table.c.completion, table.c.input_tokens,
        table.c.output_tokens, table.c.expires_at, table.c.request_id,
    ).where(table.c.key == key, table.c.tenant == tenant, table.c.expires_at > func.now())
    with database_errors(engine):
        async with engine.connect() as connection:
            row = (await connection.execute(statement)).one_or_none()
    if row is None:
        return None
    return CachedAnswer(key=row.key, tenant=row.tenant, model=row.model,
                        completion=row.completion, input_tokens=row.input_tokens,
                        output_tokens=row.output_tokens, expires_at=row.expires_at,
                        request_id=row.request_id)


async def vectors_since(engine: AsyncEngine, scope: Scope, since: datetime | None,
                        limit: int) -> list[StoredVector]:
    """The unexpired vectors of `scope` created after `since` (less a margin for late
    commits), newest `limit` of them, oldest first.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    tenant, model, rest_hash = scope
    table = response_cache
    statement = select(table.c.key, table.c.embedding, table.c.expires_at,
                       table.c.created_at).where(
        table.c.tenant == tenant, table.c.model == model, table.c.rest_hash == rest_hash,
        table.c.embedding.is_not(None), table.c.expires_at > func.now(),
    ).order_by(table.c.created_at.desc()).limit(limit)
    if since is not None:
        statement = statement.where(table.c.created_at > since - LATE_COMMIT_MARGIN)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return [StoredVector(row.key, vector_from_bytes(row.embedding), row.expires_at,
                         row.created_at) for row in reversed(rows)]


def _answer_row(result: InferenceResult) -> dict[str, Any] | None:
    try:
        return _answer_values(result)
    except (ValueError, OverflowError) as exc:  # a ticket that cannot be kept is skipped
        log.warning("response cache: not keeping the answer of %s: %s", result.request_id,
                    exc)
        return None


def _answer_values(result: InferenceResult) -> dict[str, Any] | None:
    ticket = result.cache
    if ticket is None or result.status is not RequestStatus.SUCCEEDED:
        return None
    if not isinstance(result.completion, ChatCompletion):
        return None
    if any(decision.action == "restored" for decision in result.guardrails or ()):
        # The answer holds the caller's own personal data, put back after masking: it
        # must not be kept in the cache (README "Guardrails").
        return None
    usage = result.completion.usage
    embedding = None
    if ticket.embedding is not None:
        embedding = vector_from_text(ticket.embedding).astype("<f4").tobytes()
    return {
        "key": ticket.key, "tenant": result.tenant, "model": result.model,
        "request_id": result.request_id,
        "rest_hash": ticket.rest_hash if embedding is not None else None,
        "embedding": embedding,
        "completion": result.completion.model_dump(mode="json", exclude_none=True),
        "input_tokens": usage.prompt_tokens if usage else 0,
        "output_tokens": usage.completion_tokens if usage else 0,
        "expires_at": result.finished_at + timedelta(seconds=ticket.ttl_s),
    }


async def keep_answers(engine: AsyncEngine, results: Iterable[InferenceResult]) -> int:
    """Keep the answers of the succeeded `results` that carry a cache ticket; return how
    many rows were written. Also drops a few long-expired rows, so the table does not grow.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached; nothing was written (the ledger
            reads the batch again). Data PostgreSQL refuses is logged and left uncached.
    """
    # One row per key: two requests asked alike can finish in one batch, and PostgreSQL
    # refuses an upsert that touches a row twice. The later answer wins, as it would apart.
    newest: dict[str, dict[str, Any]] = {}
    for row in map(_answer_row, results):
        if row is not None and (row["key"] not in newest
                                or row["expires_at"] > newest[row["key"]]["expires_at"]):
            newest[row["key"]] = row
    rows = list(newest.values())
    if not rows:
        return 0
    table = response_cache
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={name: statement.excluded[name] for name in (
            "request_id", "rest_hash", "embedding", "completion", "input_tokens",
            "output_tokens", "expires_at")} | {"created_at": func.now()},
        # Never another tenant's row; never an answer older than the one kept.
        where=(table.c.tenant == statement.excluded.tenant)
        & (table.c.expires_at < statement.excluded.expires_at),
    )
    expired = select(table.c.key).where(
        table.c.expires_at < func.now() - text("interval '1 minute'")
    ).limit(EXPIRED_SWEEP_ROWS).scalar_subquery()
    try:
        with database_errors(engine):
            async with engine.begin() as connection:
                await connection.execute(statement, rows)
                await connection.execute(delete(table).where(table.c.key.in_(expired)))
    except DBAPIError:  # refused data: the answer goes uncached; the ledger must go on
        log.exception("could not keep %d answers in the response cache", len(rows))
        return 0
    return len(rows)


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A request ingress answered from the cache, to be recorded in the ledger."""

    request_id: str
    tenant: str
    api_key_id: str | None
    answer: CachedAnswer
    kind: str
    """`hit` (exact) or `semantic-hit`."""
    created_at: datetime
    finished_at: datetime
    latency_ms: float


def _hit_rows(hit: CacheHit) -> tuple[dict[str, Any], dict[str, Any]]:
    answer = hit.answer
    completion = ChatCompletion.model_validate({**answer.completion, "id": hit.request_id})
    result = InferenceResult(
        request_id=hit.request_id, model=answer.model, status=RequestStatus.SUCCEEDED,
        completion=completion, tenant=hit.tenant, api_key_id=hit.api_key_id,
        deployment=CACHE_PROVIDER, provider=CACHE_PROVIDER, attempts=0,
        correlation_id=hit.request_id, created_at=hit.created_at, finished_at=hit.finished_at)
    request_row = {
        "id": hit.request_id, "tenant": hit.tenant, "api_key_id": hit.api_key_id,
        "model": answer.model, "lane": Lane.INTERACTIVE.value,
        "status": RequestStatus.SUCCEEDED.value,
        "result": result.model_dump(mode="json", exclude_none=True),
        "created_at": hit.created_at, "finished_at": hit.finished_at,
    }
    usage_row = {
        # One call per hit, whatever retries the recording: the id derives from the request.
        "event_id": f"use_cache_{hit.request_id}", "request_id": hit.request_id,
        "tenant": hit.tenant, "api_key_id": hit.api_key_id, "model": answer.model,
        "deployment": CACHE_PROVIDER, "provider": CACHE_PROVIDER,
        "provider_request_id": answer.request_id,  # whose answer was replayed
        "input_tokens": 0, "output_tokens": 0, "cost_usd": Decimal(0),
        "latency_ms": hit.latency_ms, "status": "succeeded", "cache": hit.kind,
        "saved_input_tokens": answer.input_tokens,
        "saved_output_tokens": answer.output_tokens,
        "started_at": hit.created_at, "finished_at": hit.finished_at,
    }
    return request_row, usage_row


async def record_hits(engine: AsyncEngine, hits: Sequence[CacheHit]) -> None:
    """Record `hits` in the ledger tables, in one transaction (idempotent by their ids).

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached; nothing was written.
    """
    if not hits:
        return
    pairs = [_hit_rows(hit) for hit in hits]
    requests_statement = insert(requests).on_conflict_do_nothing(index_elements=["id"])
    usage_statement = insert(usage_events).on_conflict_do_nothing(index_elements=["event_id"])
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(requests_statement, [request for request, _ in pairs])
            await connection.execute(usage_statement, [usage for _, usage in pairs])

