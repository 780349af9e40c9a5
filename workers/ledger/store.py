"""The ledger's writes: one transaction per batch, every statement idempotent.

- usage: `INSERT … ON CONFLICT (event_id) DO NOTHING` — a redelivered event is not a row.
  The rows that were new (and only those) are added to the tenant's and the key's monthly
  spend account (and, for a daily spend alert, to the day of their `finished_at`) in the
  same statement, so a redelivered event is never charged twice and the accounts never
  disagree with the rows they sum.
- request: insert as `queued`; if its result got there first, only fill in the lane.
- result: upsert the final status, but only over `queued` — the first final answer wins,
  whichever of request and result arrives first. A request whose result is in the same
  batch (the usual case under load) goes in final at once, as one row version instead of
  an insert and an update. A final result also ends its request's admission hold
  (a succeeded one once its usage is recorded too: see `_settling`), which PostgreSQL
  deletes once: a redelivered record releases nothing.
- tenants: a request id belongs to the tenant that recorded it first. A result or usage
  event naming another tenant for it is refused (dead-lettered, `_foreign`), and every
  statement also matches on tenant, so even a race between ledgers cannot let one
  tenant's record write into another's request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import TextClause, case, func, text
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.stores.database import database_errors, is_data_error, sqlstate
from broker.stores.guardrail_events import events_of_results, insert_guardrail_events
from broker.stores.notifications import notify_final_results
from broker.stores.tables import requests, usage_events
from workers.ledger.pricing import price_usage
from workers.ledger.rows import Kind, LedgerBatch, LedgerRow, Poison

log = logging.getLogger("sluice.ledger")

# Each statement is built once and executed with many parameter sets: SQLAlchemy compiles
# it once and caches it. A multi-row VALUES list sized per batch was compiled anew for
# every batch, which cost 45% of the ledger's CPU in the benchmark profile.

# Usage goes in as one array per column (`unnest`), so a batch is one statement and one
# round trip whatever its size, and RETURNING can tell the new rows from redelivered ones.
# Periods are UTC months of `finished_at`, like `spend_by_tenant_month`, and daily-alert
# days are its UTC days: when the spend happened, not when the ledger got to it (a ledger
# catching up after midnight must not put yesterday's spend into today). The accounts of
# the holds this batch releases are charged nothing here but are locked in the same sorted
# pass (`sluice_usage_add` upserts in (scope, period) order, then the days of daily-alert
# rules): taking them later, in `sluice_spend_release`, could lock out of order against a
# concurrent admission.
_USAGE = """
WITH new AS (
    INSERT INTO usage_events ({columns})
    SELECT * FROM unnest({arrays})
    ON CONFLICT (event_id) DO NOTHING
    RETURNING tenant, api_key_id, finished_at, cost_usd, input_tokens, output_tokens
), charges AS (
    SELECT s.scope, (date_trunc('month', new.finished_at AT TIME ZONE 'UTC'))::date AS period,
           (new.finished_at AT TIME ZONE 'UTC')::date AS day,
           coalesce(new.cost_usd, 0) AS usd,
           new.input_tokens::bigint + new.output_tokens AS tokens
    FROM new CROSS JOIN LATERAL (VALUES ('tenant:' || new.tenant), ('key:' || new.api_key_id))
        AS s(scope)
    WHERE s.scope IS NOT NULL
    UNION ALL
    SELECT s.scope, h.period, NULL, 0, 0
    FROM spend_holds h CROSS JOIN LATERAL unnest(h.scopes) AS s(scope)
    WHERE h.request_id = ANY(CAST(:settling AS TEXT[]))
), accounts AS (
    SELECT array_agg(scope) AS scopes, array_agg(period) AS periods, array_agg(usd) AS usd,
           array_agg(tokens) AS tokens
    FROM (SELECT scope, period, sum(usd) AS usd, sum(tokens)::bigint AS tokens
          FROM charges GROUP BY scope, period) AS monthly
), days AS (
    SELECT array_agg(scope) AS scopes, array_agg(day) AS days, array_agg(usd) AS usd
    FROM charges WHERE day IS NOT NULL AND usd > 0
)
SELECT sluice_usage_add(accounts.scopes, accounts.periods, accounts.usd, accounts.tokens,
                        days.scopes, days.days, days.usd)
FROM accounts, days
"""

RELEASE_STATEMENT = text("SELECT sluice_spend_release(CAST(:request_ids AS TEXT[]))")
_POSITION = {name: index for index, name in enumerate(usage_events.c.keys())}


@cache
def usage_statement(columns: tuple[str, ...]) -> TextClause:
    """Insert usage rows not recorded yet and add the new ones to their spend accounts.

    One statement per set of columns (the keys of the row dicts), so a key added to
    `usage_row` needs no edit here once its column exists. Parameters: one array per
    column, named like it, and `settling` (request ids whose holds the batch releases).
    """
    dialect = PGDialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it untyped
    arrays = ", ".join(
        f"CAST(:{name} AS {usage_events.c[name].type.compile(dialect=dialect)}[])"
        for name in columns
    )
    return text(_USAGE.format(columns=", ".join(columns), arrays=arrays))


def request_statement() -> Insert:
    """Insert queued requests; never touch the status of one already recorded."""
    statement = insert(requests)
    return statement.on_conflict_do_update(
        index_elements=[requests.c.id],
        # A result recorded first left the template columns null: the request brings them.
        set_={"lane": statement.excluded.lane, "template": statement.excluded.template,
              "template_version": statement.excluded.template_version,
              "updated_at": func.now()},
        where=requests.c.lane.is_(None) & (requests.c.tenant == statement.excluded.tenant),
    )


def _routing_kept(new: Any) -> dict[str, Any]:
    """The routing and template a request row already has, else the incoming row's: a
    Kafka-native request's variant is assigned by the worker and first known from its
    result; the template is known from the request only."""
    return {column: func.coalesce(requests.c[column], new[column])
            for column in ("variant", "requested_model", "shadow_of", "template",
                           "template_version")}


def result_statement() -> Insert:
    """Record final results; a request that already has one keeps it."""
    statement = insert(requests)
    return statement.on_conflict_do_update(
        index_elements=[requests.c.id],
        set_={
            "status": statement.excluded.status,
            "result": statement.excluded.result,
            "error": statement.excluded.error,
            "finished_at": statement.excluded.finished_at,
            **_routing_kept(statement.excluded),
            "updated_at": func.now(),
        },
        where=(requests.c.status == "queued") & (requests.c.tenant == statement.excluded.tenant),
    )


def answered_statement() -> Insert:
    """Record requests together with their final result (both in one batch).

    The first final answer still wins: a row already final keeps its status, and only
    gets the lane if its result was recorded before its request.
    """
    statement = insert(requests)
    new = statement.excluded
    queued = requests.c.status == "queued"

    def final(column: str) -> Any:
        return case((queued, new[column]), else_=requests.c[column])

    return statement.on_conflict_do_update(
        index_elements=[requests.c.id],
        set_={
            "lane": func.coalesce(requests.c.lane, new.lane),
            "status": final("status"),
            "result": final("result"),
            "error": final("error"),
            "finished_at": final("finished_at"),
            **_routing_kept(new),
            "updated_at": func.now(),
        },
        where=(queued | requests.c.lane.is_(None)) & (requests.c.tenant == new.tenant),
    )


_STATEMENTS = {
    Kind.REQUEST: request_statement(),
    Kind.RESULT: result_statement(),
}
_ANSWERED = answered_statement()


def pair_answered(
    queued: Sequence[LedgerRow], finals: Sequence[LedgerRow]
) -> tuple[list[LedgerRow], list[LedgerRow], list[dict[str, Any]]]:
    """Split a batch's request and result rows by whether both sides of an id are here.

    Returns the requests without their result, the results without their request, and
    for each id with both: the result's values with the request's lane (which a result
    does not carry).
    """
    # What only the request knows (a result carries neither lane nor template).
    request_only = {row.key: {"lane": row.values["lane"],
                              "template": row.values.get("template"),
                              "template_version": row.values.get("template_version")}
                    for row in queued}
    tenants = {row.key: row.values["tenant"] for row in queued}
    # A result naming another tenant is no answer to the request (see `_foreign`).
    answered = {row.key for row in finals
                if row.key in request_only and tenants[row.key] == row.values["tenant"]}
    return (
        [row for row in queued if row.key not in answered],
        [row for row in finals if row.key not in answered],
        [row.values | request_only[row.key] for row in finals if row.key in answered],
    )


def uniform(rows: Sequence[LedgerRow]) -> list[dict[str, Any]]:
    """Parameter sets with the same keys (one compiled statement serves them all).

    A key some rows lack (e.g. `price_id` of an unpriced call) is NULL for those rows.
    """
    keys = {key for row in rows for key in row.values}
    return [{key: row.values.get(key) for key in keys} for row in rows]


def usage_arrays(rows: Sequence[LedgerRow]) -> tuple[tuple[str, ...], dict[str, list[Any]]]:
    """The columns the rows have, in table order, and one array of values per column.

    A key some rows lack is NULL for those rows. A key that is no column of
    `usage_events` raises KeyError: recording it nowhere would lose it silently.
    """
    keys = {key for row in rows for key in row.values}
    columns = tuple(sorted(keys, key=_POSITION.__getitem__))
    return columns, {name: [row.values.get(name) for row in rows] for name in columns}


async def _write_usage(
    connection: AsyncConnection, rows: Sequence[LedgerRow], settling: Sequence[str]
) -> None:
    columns, arrays = usage_arrays(rows)
    await connection.execute(usage_statement(columns), {**arrays, "settling": list(settling)})


async def _write(connection: AsyncConnection, kind: Kind, rows: Sequence[LedgerRow]) -> None:
    """Rows of one kind (holds are released by the caller, see `_settling`)."""
    if not rows:
        return
    if kind is Kind.USAGE:
        await _write_usage(connection, rows, ())
        return
    await connection.execute(_STATEMENTS[kind], uniform(rows))


async def _settling(connection: AsyncConnection, batch: LedgerBatch) -> list[str]:
    """The requests whose admission holds this batch releases.

    A hold ends when its request's cost is on the books, not before: a succeeded request
    is released once its result *and* its usage are recorded (they come on different
    topics, in either order; releasing on the result alone left a moment in which neither
    hold nor spend counted, and admission let more requests through than the budget
    held). Any other final result releases at once (no usage may ever come for it).
    """
    results = batch.rows[Kind.RESULT]
    usage_requests = {row.values["request_id"] for row in batch.rows[Kind.USAGE]}
    candidates = sorted({row.key for row in results} | usage_requests)
    if not candidates:
        return []
    # Most requests have no hold (no budgets): one look at the small holds table, and the
    # rest only for those that do.
    held = set((await connection.execute(
        text("SELECT request_id FROM spend_holds WHERE request_id = ANY(CAST(:ids AS TEXT[]))"),
        {"ids": candidates})).scalars())
    if not held:
        return []
    results = [row for row in results if row.key in held]
    usage_requests &= held
    settling = {row.key for row in results if row.values["status"] != "succeeded"}
    succeeded = {row.key for row in results if row.values["status"] == "succeeded"}
    settling |= succeeded & usage_requests
    waiting = sorted(succeeded - usage_requests)
    if waiting:  # their usage may be on the books from an earlier batch
        billed = await connection.execute(
            text("SELECT DISTINCT request_id FROM usage_events "
                 "WHERE request_id = ANY(CAST(:ids AS TEXT[]))"), {"ids": waiting})
        settling |= set(billed.scalars())
    unanswered = sorted(usage_requests - {row.key for row in results})
    if unanswered:  # usage arriving after its succeeded result
        final = await connection.execute(
            text("SELECT id FROM requests WHERE id = ANY(CAST(:ids AS TEXT[])) "
                 "AND status = 'succeeded'"), {"ids": unanswered})
        settling |= set(final.scalars())
    return sorted(settling)


def _request_of(row: LedgerRow) -> str:
    return str(row.values["request_id"]) if row.kind is Kind.USAGE else row.key


async def _foreign(connection: AsyncConnection, batch: LedgerBatch) -> tuple[LedgerBatch,
                                                                             list[Poison]]:
    """The batch without the results and usage events that name another tenant than
    their request's, and those as poison.

    A request belongs to the tenant that recorded it (in PostgreSQL, or else in this
    batch). Only workers write results and usage, from verified requests; one naming
    another tenant is forged or broken, and recording it would finish, or charge, another
    tenant's request. One indexed look-up per batch.
    """
    claims = [*batch.rows[Kind.RESULT], *batch.rows[Kind.USAGE]]
    if not claims:
        return batch, []
    owners = {row.key: row.values["tenant"] for row in batch.rows[Kind.REQUEST]}
    recorded = await connection.execute(
        text("SELECT id, tenant FROM requests WHERE id = ANY(CAST(:ids AS TEXT[]))"),
        {"ids": sorted({_request_of(row) for row in claims})})
    owners.update({row[0]: row[1] for row in recorded})
    refused: list[Poison] = []
    kept = LedgerBatch(poison=batch.poison)
    for kind, rows in batch.rows.items():
        for row in rows:
            owner = owners.get(_request_of(row)) if kind is not Kind.REQUEST else None
            if owner is None or owner == row.values["tenant"]:
                kept.rows[kind].append(row)
                continue
            reason = (f"{kind.value} for request {_request_of(row)} names tenant "
                      f"'{row.values['tenant']}', but the request belongs to tenant '{owner}'")
            log.warning("ledger: refusing %s", reason)
            refused.append(Poison(row.record, reason))
    return kept, refused


async def _release_for(connection: AsyncConnection, kind: Kind, row: LedgerRow) -> None:
    # One by one (after a refused batch): the holds `_settling` would release for this row.
    single = LedgerBatch()
    single.rows[kind].append(row)
    ids = await _settling(connection, single)
    if ids:
        await connection.execute(RELEASE_STATEMENT, {"request_ids": ids})


async def write_batch(engine: AsyncEngine, batch: LedgerBatch) -> list[Poison]:
    """Write a batch in one transaction; return the rows PostgreSQL refused as poison.

    Normally every row goes in with a few multi-row statements. If PostgreSQL refuses the
    data itself (SQLSTATE class 22/23: a NUL character, a number out of range), the batch is
    written again row by row under savepoints, so one bad record cannot stall the ledger.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached; nothing was written.
        sqlalchemy.exc.DBAPIError: any other database failure; nothing was written.
    """
    # Kind's order puts requests before results: a result in the same batch then finds
    # (and finalises) the queued row instead of racing it.
    foreign: list[Poison] = []
    with database_errors(engine):
        try:
            async with engine.begin() as connection:
                batch, foreign = await _foreign(connection, batch)
                usage = batch.rows[Kind.USAGE]
                await price_usage(connection, usage)
                settling = await _settling(connection, batch)
                if usage:
                    await _write_usage(connection, usage, settling)
                alone, unanswered_results, answered = pair_answered(
                    batch.rows[Kind.REQUEST], batch.rows[Kind.RESULT])
                await _write(connection, Kind.REQUEST, alone)
                if answered:
                    await connection.execute(_ANSWERED, answered)
                await _write(connection, Kind.RESULT, unanswered_results)
                # Guardrail decisions of these results, never the matched text.
                await insert_guardrail_events(connection, events_of_results(
                    row.values for row in batch.rows[Kind.RESULT]))
                if settling:
                    await connection.execute(RELEASE_STATEMENT, {"request_ids": settling})
                # Long polls waiting on these wake at the commit (broker/stores/notifications).
                await notify_final_results(connection, _final_ids(batch))
            return foreign
        except DBAPIError as exc:
            if not is_data_error(exc):
                raise
        return [*foreign, *await _write_one_by_one(engine, batch)]


async def _write_one_by_one(engine: AsyncEngine, batch: LedgerBatch) -> list[Poison]:
    # Accounts are locked row by row here, not in one sorted pass; a deadlock with an
    # admission is possible but rare, and it is a retriable failure of the whole batch.
    refused: list[Poison] = []
    async with engine.begin() as connection:
        await price_usage(connection, batch.rows[Kind.USAGE])
        for kind in Kind:
            for row in batch.rows[kind]:
                try:
                    async with connection.begin_nested():
                        await _write(connection, kind, [row])
                        if kind in (Kind.RESULT, Kind.USAGE):
                            await _release_for(connection, kind, row)
                except DBAPIError as exc:
                    if not is_data_error(exc):
                        raise
                    orig = exc.orig if exc.orig is not None else exc
                    reason = f"refused by PostgreSQL ({sqlstate(exc)}): {orig}"
                    refused.append(Poison(row.record, reason))
        await insert_guardrail_events(connection, events_of_results(
            row.values for row in batch.rows[Kind.RESULT]
            if all(poison.record is not row.record for poison in refused)))
        await notify_final_results(connection, _final_ids(batch))
    return refused


def _final_ids(batch: LedgerBatch) -> list[str]:
    return sorted({row.key for row in batch.rows[Kind.RESULT]})
