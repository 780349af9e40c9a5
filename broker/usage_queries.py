"""Usage reports over the ledger: totals grouped by tenant, key, model, provider, deployment,
day or hour, for one time range. Shared by `GET /v1/usage` and `sluice usage`.

Days and hours are UTC buckets of `finished_at` (the moment a call was billed), the same
as the `usage_daily` view. Cost is summed in `numeric` and handed out as `Decimal`; rows
whose price was unknown are counted in `unpriced_calls`, so a NULL never passes as zero.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.database import database_errors
from broker.errors import InvalidRequest
from broker.tables import usage_events

_c = usage_events.c
_utc = func.timezone("UTC", _c.finished_at)
DIMENSIONS: dict[str, ColumnElement[Any]] = {
    "tenant": _c.tenant,
    "key": _c.api_key_id,
    "model": _c.model,
    "provider": _c.provider,
    "deployment": _c.deployment,
    "day": func.date_trunc("day", _utc),
    "hour": func.date_trunc("hour", _utc),
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
    groups = [DIMENSIONS[name].label(name) for name in group_by]
    statement = select(
        *groups,
        func.count().label("calls"),
        func.count(_c.request_id.distinct()).label("requests"),
        func.coalesce(func.sum(_c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(_c.output_tokens), 0).label("output_tokens"),
        func.sum(_c.cost_usd).label("cost_usd"),
        func.count().filter(_c.cost_usd.is_(None)).label("unpriced_calls"),
    ).where(_c.finished_at >= start, _c.finished_at < end)
    if tenant is not None:
        statement = statement.where(_c.tenant == tenant)
    if groups:
        statement = statement.group_by(*groups).order_by(*groups)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
    # Without groups an empty range still yields one row of zeros; keep that, it answers.
    return [_plain(dict(row), group_by) for row in rows]


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

