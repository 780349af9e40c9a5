"""Usage reports over the ledger: totals grouped by tenant, key, model, provider, deployment,
day or hour, for one time range. Shared by `GET /v1/usage` and `sluice usage`.

Days and hours are UTC buckets of `finished_at` (the moment a call was billed), the same
as the `usage_daily` view. Cost is summed in `numeric` and handed out as `Decimal`; rows
whose price was unknown are counted in `unpriced_calls`, so a NULL never passes as zero.

Whole UTC days of a range are read from `usage_rollup` (daily totals a trigger keeps exact;
migration 0008) and only the partial days at its ends from `usage_events`: over 10 million
rows a 30-day report took 20 s from the rows and under 0.5 s this way. Grouping by hour
reads the rows. `requests` counts distinct requests; the rollup counts a request in the
group of its first call, so in whole days a request whose calls fall in two groups (a
failover to another deployment, a retry after midnight) is counted once, not in each.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Select,
    and_,
    case,
    cast,
    func,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.errors import InvalidRequest
from broker.stores.database import database_errors
from broker.stores.tables import usage_events, usage_rollup

_c = usage_events.c
_r = usage_rollup.c
_utc = func.timezone("UTC", _c.finished_at)
DIMENSIONS: dict[str, ColumnElement[Any]] = {
    "tenant": _c.tenant,
    "key": _c.api_key_id,
    "model": _c.model,
    "provider": _c.provider,
    "deployment": _c.deployment,
    # The routing variant (A/B name, canary, stable, shadow); not in the rollup.
    "variant": _c.variant,
    "day": func.date_trunc("day", _utc),
    "hour": func.date_trunc("hour", _utc),
}
# The same dimensions in the rollup (no hours there); `day` as the same type as above.
ROLLUP_DIMENSIONS: dict[str, ColumnElement[Any]] = {
    "tenant": _r.tenant,
    "key": _r.api_key_id,
    "model": _r.model,
    "provider": _r.provider,
    "deployment": _r.deployment,
    "day": cast(_r.day, DateTime),
}
METRICS = ("calls", "requests", "input_tokens", "output_tokens", "cost_usd", "unpriced_calls")
_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_group_by(raw: str | None) -> tuple[str, ...]:
    """`"model,day"` → `("model", "day")`.

    Raises:
        InvalidRequest: an unknown dimension, a repeated one, or both day and hour.
    """
    names = tuple(part.strip() for part in (raw or "").split(",") if part.strip())
    unknown = [name for name in names if name not in DIMENSIONS]
    if unknown:
        raise InvalidRequest(
            f"Unknown group_by dimension {unknown[0]!r}; use {', '.join(DIMENSIONS)}.",
            param="group_by",
        )
    if len(set(names)) != len(names) or {"day", "hour"} <= set(names):
        raise InvalidRequest("group_by repeats a dimension or has both day and hour.",
                             param="group_by")
    return names


def parse_time(raw: str, *, param: str) -> datetime:
    """An ISO 8601 date or time; a time without zone is UTC.

    Raises:
        InvalidRequest: not a date or time.
    """
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"Invalid value for '{param}': {raw!r} is not an ISO 8601 time.",
                             param=param) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_duration(raw: str) -> timedelta | None:
    """`7d`, `12h`, `30m`, `2w` as a duration; None if `raw` is not one."""
    match = _SINCE.match(raw.strip())
    if match is None:
        return None
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_since(raw: str, now: datetime | None = None) -> datetime:
    """`7d`, `12h`, `30m`, `2w` before now, or an ISO 8601 date or time.

    Raises:
        InvalidRequest: neither form.
    """
    duration = parse_duration(raw)
    if duration is None:
        return parse_time(raw, param="since")
    return (now or datetime.now(UTC)) - duration


async def usage_report(
    engine: AsyncEngine,
    *,
    start: datetime,
    end: datetime,
    group_by: Sequence[str],
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Totals of usage that finished in `[start, end)`, one dict per group.

    Args:
        engine: the ledger database.
        start: first moment included.
        end: first moment excluded.
        group_by: names from `DIMENSIONS`, in column order.
        tenant: only this tenant's usage (None: every tenant; admins only).

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    # The rollup has no hours and no variants: those read the rows themselves.
    days = None if {"hour", "variant"} & set(group_by) else whole_days(start, end)
    if days is None:
        statement = _from_rows(group_by, tenant, _c.finished_at >= start, _c.finished_at < end)
    else:
        statement = _from_rollup(group_by, tenant, start, end, days)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
    # Without groups an empty range still yields one row of zeros; keep that, it answers.
    return [_plain(dict(row), group_by) for row in rows]


def whole_days(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The UTC midnights bounding the whole days inside `[start, end)`, or None if none."""
    first = datetime.combine(start.astimezone(UTC).date(), time(), UTC)
    if first < start:
        first += timedelta(days=1)
    last = datetime.combine(end.astimezone(UTC).date(), time(), UTC)
    return (first, last) if first < last else None


def _from_rows(group_by: Sequence[str], tenant: str | None,
               *where: ColumnElement[bool]) -> Select[Any]:
    groups = [DIMENSIONS[name].label(name) for name in group_by]
    statement = select(
        *groups,
        func.count().label("calls"),
        func.count(_c.request_id.distinct()).label("requests"),
        func.coalesce(func.sum(_c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(_c.output_tokens), 0).label("output_tokens"),
        func.sum(_c.cost_usd).label("cost_usd"),
        func.count().filter(_c.cost_usd.is_(None)).label("unpriced_calls"),
    ).where(*where)
    if tenant is not None:
        statement = statement.where(_c.tenant == tenant)
    if groups:
        statement = statement.group_by(*groups).order_by(*groups)
    return statement


def _from_rollup(group_by: Sequence[str], tenant: str | None, start: datetime, end: datetime,
                 days: tuple[datetime, datetime]) -> Select[Any]:
    # The partial days from the rows, the whole ones from the rollup, then both summed by
    # group. Cost travels as priced cost plus a count of unpriced calls: NULL only where
    # every call of a group was unpriced, as `sum` over the rows gives.
    first, last = days
    edges = _from_rows(
        group_by, tenant,
        or_(and_(_c.finished_at >= start, _c.finished_at < first),
            and_(_c.finished_at >= last, _c.finished_at < end)),
    ).order_by(None)
    edges = edges.with_only_columns(
        *[column for column in edges.selected_columns if column.key != "cost_usd"],
        func.coalesce(func.sum(_c.cost_usd), 0).label("cost_usd"),
    )
    groups = [ROLLUP_DIMENSIONS[name].label(name) for name in group_by]
    totals = select(
        *groups,
        *[func.sum(_r[name]).label(name) for name in
          ("calls", "requests", "input_tokens", "output_tokens", "unpriced_calls", "cost_usd")],
    ).where(_r.day >= first.date(), _r.day < last.date())
    if tenant is not None:
        totals = totals.where(_r.tenant == tenant)
    if groups:
        totals = totals.group_by(*groups)
    both = union_all(edges, totals).subquery()
    # Labelled afresh: a subquery column's own name is a str subclass orjson refuses as a key.
    keys = [both.c[name].label(name) for name in group_by]
    calls, unpriced = func.sum(both.c.calls), func.sum(both.c.unpriced_calls)
    statement = select(
        *keys,
        func.coalesce(calls, 0).label("calls"),
        *[func.coalesce(func.sum(both.c[name]), 0).label(name)
          for name in ("requests", "input_tokens", "output_tokens")],
        case((calls > unpriced, func.sum(both.c.cost_usd)), else_=None).label("cost_usd"),
        func.coalesce(unpriced, 0).label("unpriced_calls"),
    )
    if keys:
        statement = statement.group_by(*keys).order_by(*keys)
    return statement


def _plain(row: dict[str, Any], group_by: Sequence[str]) -> dict[str, Any]:
    for name in ("day", "hour"):
        if name in group_by and isinstance(row[name], datetime):
            bucket: datetime = row[name]
            row[name] = (
                bucket.date().isoformat() if name == "day"
                else bucket.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
            )
    for name in ("calls", "requests", "input_tokens", "output_tokens", "unpriced_calls"):
        row[name] = int(row[name])
    return row


def json_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for JSON: cost as a decimal string, so no float rounding creeps in."""
    return [
        {k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()} for row in rows
    ]


def csv_text(rows: Sequence[dict[str, Any]], group_by: Sequence[str]) -> str:
    """Rows as CSV with a header; an unknown cost is an empty cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*group_by, *METRICS])
    for row in rows:
        writer.writerow(["" if row[k] is None else row[k] for k in (*group_by, *METRICS)])
    return out.getvalue()

