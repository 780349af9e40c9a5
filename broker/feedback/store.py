"""Feedback on answers: record scores per request or batch line, report them by model,
deployment and routing variant (`POST /v1/requests/{id}/feedback`, README "Feedback").

A request's model and variant are read from `requests` and its deployment from its last
call in `usage_events` at report time, not copied at write time: feedback may arrive
before the ledger has recorded the call, and the report still groups it right once it has.
The comment is content: it is stored only for tenants with `store_content`.

One entry per (request, caller): a caller's new post on a request replaces its earlier one
(a retried POST changes nothing, a change of mind wins), and reports count requests, each
with the mean of its callers' scores, so repeated posts cannot skew an A/B comparison.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.batches.tables import batch_requests, batches
from broker.errors import InvalidRequest
from broker.stores.database import database_errors
from broker.stores.tables import feedback, requests, tenants, usage_events

# Dimensions feedback can be grouped by (a subset of the usage report's, plus variant).
FEEDBACK_DIMENSIONS = ("tenant", "model", "deployment", "variant")


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    """One feedback row as stored (`comment` is None when the tenant keeps no content).

    `replaced`: the post replaced the caller's earlier entry on the request (same `id`).
    """

    id: str
    request_id: str
    score: float
    label: str | None
    comment: str | None
    created_at: datetime
    batch_id: str | None = None
    custom_id: str | None = None
    replaced: bool = False


async def request_tenant(engine: AsyncEngine, request_id: str) -> str | None:
    """The tenant that owns a recorded request, or None if the ledger has not seen it."""
    statement = select(requests.c.tenant).where(requests.c.id == request_id)
    with database_errors(engine):
        async with engine.connect() as connection:
            tenant: str | None = (await connection.execute(statement)).scalar_one_or_none()
    return tenant


async def batch_line_request(engine: AsyncEngine, tenant: str, batch_id: str,
                             custom_id: str) -> str | None:
    """The request id of a batch line of `tenant`, or None (unknown batch, line, or tenant)."""
    statement = (
        select(batch_requests.c.request_id)
        .join(batches, batches.c.id == batch_requests.c.batch_id)
        .where(batches.c.id == batch_id, batches.c.tenant == tenant,
               batch_requests.c.custom_id == custom_id)
    )
    with database_errors(engine):
        async with engine.connect() as connection:
            request_id: str | None = (await connection.execute(statement)).scalar_one_or_none()
    return request_id


async def record_feedback(
    engine: AsyncEngine,
    *,
    tenant: str,
    api_key_id: str,
    request_id: str,
    score: float,
    label: str | None,
    comment: str | None,
    batch_id: str | None = None,
    custom_id: str | None = None,
) -> FeedbackEntry:
    """Store the feedback of caller `api_key_id` on a request, replacing its earlier one.

    The comment is kept only if the tenant opted into content storage. A replaced entry
    keeps its id; everything else (score, label, comment, batch line, `created_at`) is
    the new post's. The caller has checked that `request_id` belongs to `tenant`.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    keeps_content = select(tenants.c.store_content).where(tenants.c.name == tenant)
    new_id = f"fb_{secrets.token_hex(12)}"
    with database_errors(engine):
        async with engine.begin() as connection:
            stores = bool((await connection.execute(keeps_content)).scalar_one_or_none())
            statement = insert(feedback).values(
                id=new_id, request_id=request_id, tenant=tenant, api_key_id=api_key_id,
                batch_id=batch_id, custom_id=custom_id, score=score, label=label,
                comment=comment if stores else None,
            )
            new = statement.excluded
            # One statement: two identical posts at once still leave one entry.
            row = (await connection.execute(statement.on_conflict_do_update(
                index_elements=[feedback.c.request_id, feedback.c.api_key_id],
                set_={"score": new.score, "label": new.label, "comment": new.comment,
                      "batch_id": new.batch_id, "custom_id": new.custom_id,
                      "created_at": func.now()},
            ).returning(feedback))).one()
    return FeedbackEntry(
        id=row.id, request_id=row.request_id, score=row.score, label=row.label,
        comment=row.comment, created_at=row.created_at, batch_id=row.batch_id,
        custom_id=row.custom_id, replaced=row.id != new_id,
    )


def parse_feedback_group_by(raw: str | None) -> tuple[str, ...]:
    """`"model,variant"` → `("model", "variant")`.

    Raises:
        InvalidRequest: an unknown or repeated dimension.
    """
    names = tuple(part.strip() for part in (raw or "").split(",") if part.strip())
    unknown = [name for name in names if name not in FEEDBACK_DIMENSIONS]
    if unknown or len(set(names)) != len(names):
        raise InvalidRequest(
            f"group_by must list distinct names of {', '.join(FEEDBACK_DIMENSIONS)}.",
            param="group_by",
        )
    return names


def _last_deployment(request_id: ColumnElement[str]) -> Any:
    # The deployment of the request's last call: after a failover, the one that answered.
    return (
        select(usage_events.c.deployment)
        .where(usage_events.c.request_id == request_id)
        .order_by(usage_events.c.finished_at.desc())
        .limit(1)
        .scalar_subquery()
    )


async def feedback_report(
    engine: AsyncEngine,
    *,
    start: datetime,
    end: datetime,
    group_by: Sequence[str],
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Feedback given in `[start, end)`: rated requests and their mean score per group.

    A request counts once, scored by the mean of its callers' entries (one each).
    Requests the ledger has not recorded yet group under model and deployment `""`.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    given = select(feedback.c.tenant, feedback.c.request_id,
                   func.avg(feedback.c.score).label("score")).where(
        and_(feedback.c.created_at >= start, feedback.c.created_at < end))
    if tenant is not None:
        given = given.where(feedback.c.tenant == tenant)
    rated = given.group_by(feedback.c.tenant, feedback.c.request_id).subquery("rated")
    columns: dict[str, ColumnElement[Any]] = {
        "tenant": rated.c.tenant,
        "model": func.coalesce(requests.c.model, ""),
        "deployment": func.coalesce(_last_deployment(rated.c.request_id), ""),
        "variant": requests.c.variant,
    }
    groups = [columns[name].label(name) for name in group_by]
    statement = (
        select(*groups, func.count().label("feedback_count"),
               func.avg(rated.c.score).label("feedback_mean_score"))
        .select_from(rated.outerjoin(requests, requests.c.id == rated.c.request_id))
    )
    if groups:
        statement = statement.group_by(*groups).order_by(*groups)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
    return [
        {**{name: row[name] for name in group_by},
         "feedback_count": int(row["feedback_count"]),
         "feedback_mean_score": (None if row["feedback_mean_score"] is None
                                 else float(row["feedback_mean_score"]))}
        for row in rows
    ]


def merge_feedback(usage_rows: list[dict[str, Any]], feedback_rows: Sequence[dict[str, Any]],
                   group_by: Sequence[str]) -> list[dict[str, Any]]:
    """Usage rows with `feedback_count` and `feedback_mean_score` of the same group.

    A group with feedback but no usage in the range gets a row of its own (usage metrics
    absent), so no feedback goes unreported.
    """
    by_group = {tuple(row[name] for name in group_by): row for row in feedback_rows}
    merged = []
    for row in usage_rows:
        found = by_group.pop(tuple(row.get(name) for name in group_by), None)
        merged.append(row | {
            "feedback_count": found["feedback_count"] if found else 0,
            "feedback_mean_score": found["feedback_mean_score"] if found else None,
        })
    merged.extend(dict(row) for row in by_group.values())
    return merged
