"""Migration 0024 both ways on real PostgreSQL: upgrading keeps each (request, caller)'s
latest feedback; downgrading keeps each (scope, threshold, period)'s first alert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations

pytestmark = pytest.mark.integration


async def _migrate(engine: AsyncEngine, revision: str) -> None:
    def run(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(Path(migrations.__file__).parent))
        config.attributes["connection"] = connection
        if revision == "head":
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def _execute(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.begin() as connection:
        result = await connection.execute(text(sql))
        return list(result.all()) if result.returns_rows else []


async def test_down_and_up_again(engine: AsyncEngine) -> None:
    # At 0024: the same 100% twice, at two budget amounts.
    await _execute(engine, "INSERT INTO budget_alerts_fired (scope, tenant, threshold, period, "
                           "spend_usd, budget_usd) VALUES "
                           "('tenant:acme', 'acme', '100%', '2026-12-01', 10, 10), "
                           "('tenant:acme', 'acme', '100%', '2026-12-01', 51, 50)")
    await _migrate(engine, "0023")
    assert await _execute(engine, "SELECT budget_usd FROM budget_alerts_fired") == [(10,)]
    assert await _execute(engine, "SELECT to_regprocedure('sluice_usage_add(text[], date[], "
                                  "numeric[], bigint[], text[], date[], numeric[])')") == [
        (None,)]

    # At 0023: several posts per (request, key), as 0022 allowed.
    await _execute(engine, "INSERT INTO feedback (id, request_id, tenant, api_key_id, score, "
                           "created_at) VALUES "
                           "('fb_1', 'req_1', 'acme', 'key_a', 1, '2026-12-01T10:00Z'), "
                           "('fb_2', 'req_1', 'acme', 'key_a', -1, '2026-12-01T11:00Z'), "
                           "('fb_3', 'req_1', 'acme', 'key_b', 0, '2026-12-01T09:00Z'), "
                           "('fb_4', 'req_2', 'acme', 'key_a', 0.5, '2026-12-01T09:00Z')")
    assert await _execute(engine, "SELECT feedback_count FROM feedback_by_variant") == [(4,)]
    await _migrate(engine, "head")
    assert await _execute(engine, "SELECT id FROM feedback ORDER BY id") == [
        ("fb_2",), ("fb_3",), ("fb_4",)]
    assert await _execute(engine, "SELECT feedback_count, mean_score "
                                  "FROM feedback_by_variant") == [(2, 0)]
