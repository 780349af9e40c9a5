"""`get_templates` on a real PostgreSQL: latest versions now and at a batch's creation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.templates import create_template, get_templates
from broker.templates import TemplateSpec

pytestmark = pytest.mark.integration


def _spec(name: str, content: str) -> TemplateSpec:
    return TemplateSpec(name=name, messages=[{"role": "user", "content": content}],
                        parameters={"model": "m"})


async def test_a_batch_reads_the_versions_latest_at_its_creation(engine: AsyncEngine) -> None:
    await create_template(engine, _spec("greet", "one"))
    await create_template(engine, _spec("greet", "two"))
    await asyncio.sleep(0.01)  # PostgreSQL's now() is the transaction's start
    async with engine.connect() as connection:
        created = (await connection.execute(text("SELECT now()"))).scalar_one()
    await asyncio.sleep(0.01)
    await create_template(engine, _spec("greet", "three"))
    await create_template(engine, _spec("later", "new"))  # none existed at `created`

    loaded = await get_templates(engine, {"greet", "later"}, {("greet", 1)}, as_of=created)
    assert sorted((t.name, t.version) for t in loaded) == [
        ("greet", 1), ("greet", 2), ("greet", 3), ("later", 1)]
    # Without a time only the latest now (and what is pinned).
    now = await get_templates(engine, {"greet"}, set())
    assert [(t.name, t.version) for t in now] == [("greet", 3)]
    # A time before every version reads only the latest now.
    before = await get_templates(engine, {"greet"}, set(), as_of=datetime(2000, 1, 1, tzinfo=UTC))
    assert [(t.name, t.version) for t in before] == [("greet", 3)]
