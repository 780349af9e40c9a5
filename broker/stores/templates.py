"""Prompt templates in PostgreSQL: every version kept, a change is the next version.

A version is immutable once written, so a ledger row's (template, version) always names
the exact prompt that request was rendered from.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, or_, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.errors import DatabaseUnavailable
from broker.stores.database import database_errors, sqlstate
from broker.stores.tables import prompt_templates
from broker.templates.spec import PromptTemplate, TemplateSpec

_UNIQUE_VIOLATION = "23505"


def _template(row: Any) -> PromptTemplate:  # a Row of prompt_templates
    return PromptTemplate(
        name=row.name, version=row.version, description=row.description,
        messages=row.messages, parameters=row.parameters, variables=row.variables,
        created_at=row.created_at, requires_approval=row.requires_approval,
    )


async def create_template(engine: AsyncEngine, spec: TemplateSpec) -> PromptTemplate:
    """Store `spec` as the next version of its name (1 for a new name).

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    table = prompt_templates
    following = (select(func.coalesce(func.max(table.c.version), 0) + 1)
                 .where(table.c.name == spec.name).scalar_subquery())
    # A new version that does not say keeps the latest one's approval requirement: fixing
    # a typo must not open a gated template to everyone (lifting it takes an explicit false).
    requires_approval: Any = spec.requires_approval
    if "requires_approval" not in spec.model_fields_set:
        requires_approval = func.coalesce(
            select(table.c.requires_approval).where(table.c.name == spec.name)
            .order_by(table.c.version.desc()).limit(1).scalar_subquery(), False)
    data = spec.model_dump(mode="json")
    statement = insert(table).values(
        name=spec.name, version=following, description=spec.description,
        messages=data["messages"], parameters=data["parameters"],
        variables=data["variables"], requires_approval=requires_approval,
    ).returning(*table.c)
    # Two writers of one name at once compute the same next version; the primary key
    # refuses the second, which then simply tries again with the version after.
    for _ in range(5):
        try:
            with database_errors(engine):
                async with engine.begin() as connection:
                    row = (await connection.execute(statement)).one()
            return _template(row)
        except IntegrityError as exc:
            if sqlstate(exc) != _UNIQUE_VIOLATION:
                raise
    raise DatabaseUnavailable(f"template {spec.name!r}: no free version after 5 tries")


async def get_template(engine: AsyncEngine, name: str,
                       version: int | None = None) -> PromptTemplate | None:
    """Version `version` of template `name` (its latest when None); None if absent."""
    table = prompt_templates
    query = select(table).where(table.c.name == name)
    query = (query.where(table.c.version == version) if version is not None
             else query.order_by(table.c.version.desc()).limit(1))
    with database_errors(engine):
        async with engine.connect() as connection:
            row = (await connection.execute(query)).one_or_none()
    return None if row is None else _template(row)


async def list_templates(engine: AsyncEngine) -> list[PromptTemplate]:
    """The latest version of every template, by name."""
    table = prompt_templates
    latest = (select(table.c.name, func.max(table.c.version).label("version"))
              .group_by(table.c.name).subquery())
    query = (select(table)
             .join(latest, (table.c.name == latest.c.name)
                   & (table.c.version == latest.c.version))
             .order_by(table.c.name))
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(query)).all()
    return [_template(row) for row in rows]


async def get_templates(engine: AsyncEngine, names: Collection[str],
                        pinned: Collection[tuple[str, int]], *,
                        as_of: datetime | None = None) -> list[PromptTemplate]:
    """The latest version of each of `names` and each (name, version) of `pinned`, in one
    query (a batch launch meets many template lines per chunk); absent ones are left out.
    With `as_of`, also each name's latest version created at or before it (a batch's lines
    render with the versions of the batch's creation, `broker.batches.template_calls`).

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    table = prompt_templates.c
    wanted: list[Any] = []
    if names:
        latest = (select(table.name, func.max(table.version))
                  .where(table.name.in_(sorted(names))).group_by(table.name))
        wanted.append(tuple_(table.name, table.version).in_(latest))
        if as_of is not None:
            then = (select(table.name, func.max(table.version))
                    .where(table.name.in_(sorted(names)), table.created_at <= as_of)
                    .group_by(table.name))
            wanted.append(tuple_(table.name, table.version).in_(then))
    if pinned:
        wanted.append(tuple_(table.name, table.version).in_(sorted(pinned)))
    if not wanted:
        return []
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(select(prompt_templates)
                                             .where(or_(*wanted)))).all()
    return [_template(row) for row in rows]
