"""Usage queries: `GET /v1/usage` (tenant-scoped, JSON and CSV), `sluice usage`, SQL views."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.stores.keys import create_api_key
from sluice.cli import main
from tests.integration.test_api_keys import ADMIN, bearer, client

pytestmark = pytest.mark.integration
__all__ = ["client"]  # a fixture, shared
DAY = datetime(2026, 2, 10, 9, 30, tzinfo=UTC)
RANGE = {"from": "2026-02-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}


def row(
    n: int, tenant: str, model: str, day: int, cost: str | None, **extra: Any
) -> dict[str, Any]:
    finished = DAY + timedelta(days=day, minutes=n)
    return {
        "event_id": f"use_{tenant}_{n}", "request_id": f"req_{tenant}_{n // 2}",
        "tenant": tenant, "api_key_id": f"key_{tenant}", "model": model, "deployment": "sim",
        "provider": "openai", "input_tokens": 100 + n, "output_tokens": 10 * n,
        "cost_usd": Decimal(cost) if cost is not None else None, "latency_ms": 5.0,
        "status": "succeeded", "started_at": finished, "finished_at": finished, **extra,
    }


@pytest.fixture
async def recorded(engine: AsyncEngine) -> AsyncIterator[None]:
    from broker.stores.tables import usage_events

    rows = [
        row(1, "acme", "gpt-4o-mini", 0, "0.0000123456"),
        row(2, "acme", "gpt-4o-mini", 0, "0.1"),
        row(3, "acme", "gpt-4o-mini", 1, None),  # unpriced
        row(4, "acme", "llama", 1, "0.3333333333"),
        row(5, "globex", "gpt-4o-mini", 0, "7"),
        row(6, "acme", "gpt-4o-mini", 40, "99"),  # outside the range
    ]
    async with engine.begin() as connection:
        await connection.execute(insert(usage_events), rows)
    yield


def parse_csv(body: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body)))


@pytest.mark.usefixtures("recorded")
async def test_usage_is_tenant_scoped_and_csv_matches_json(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    secret, _ = await create_api_key(engine, "acme")
    # `tenant=globex` is ignored for a tenant's own key.
    query = RANGE | {"group_by": "model,day", "tenant": "globex"}
    as_json = (await client.get("/v1/usage", params=query, headers=bearer(secret))).json()
    data = as_json["data"]
    assert as_json["tenant"] == "acme"
    assert [(r["model"], r["day"]) for r in data] == [
        ("gpt-4o-mini", "2026-02-10"), ("gpt-4o-mini", "2026-02-11"), ("llama", "2026-02-11"),
    ]
    assert data[0]["cost_usd"] == "0.1000123456" and data[0]["calls"] == 2
    assert data[0]["input_tokens"] == 203 and data[0]["requests"] == 2
    assert data[1]["cost_usd"] is None and data[1]["unpriced_calls"] == 1

    response = await client.get("/v1/usage", params=query | {"format": "csv"},
                                headers=bearer(secret))
    assert response.headers["content-type"].startswith("text/csv")
    parsed = parse_csv(response.text)
    assert len(parsed) == len(data)
    for line, item in zip(parsed, data, strict=True):
        for name, value in item.items():
            if name == "cost_usd":
                assert (Decimal(line[name]) if line[name] else None) == (
                    Decimal(value) if value is not None else None
                )
            elif isinstance(value, int):
                assert int(line[name]) == value
            else:
                assert line[name] == value


@pytest.mark.usefixtures("recorded")
async def test_admin_sees_every_tenant(client: httpx.AsyncClient) -> None:
    query = RANGE | {"group_by": "tenant"}
    data = (await client.get("/v1/usage", params=query, headers=bearer(ADMIN))).json()["data"]
    assert {r["tenant"]: r["cost_usd"] for r in data} == {
        "acme": "0.4333456789", "globex": "7.0000000000",
    }
    only = (await client.get("/v1/usage", params=query | {"tenant": "globex"},
                             headers=bearer(ADMIN))).json()["data"]
    assert [r["tenant"] for r in only] == ["globex"]
    hourly = (await client.get("/v1/usage", params=RANGE | {"group_by": "key,hour"},
                               headers=bearer(ADMIN))).json()["data"]
    assert hourly[0]["hour"] == "2026-02-10T09:00:00Z"


async def test_bad_queries_are_400(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    secret, _ = await create_api_key(engine, "acme")
    for query in ({"group_by": "colour"}, {"group_by": "day,hour"}, {"from": "yesterday"},
                  {"format": "xml"}):
        response = await client.get("/v1/usage", params=query, headers=bearer(secret))
        assert response.status_code == 400, query
    assert (await client.get("/v1/usage")).status_code == 401


@pytest.mark.usefixtures("recorded")
async def test_views_agree_with_the_raw_rows(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        daily = (await connection.execute(text(
            "SELECT sum(cost_usd), sum(calls), sum(unpriced_calls) FROM usage_daily"
        ))).one()
        monthly = (await connection.execute(text(
            "SELECT tenant, cost_usd FROM spend_by_tenant_month "
            "WHERE month = DATE '2026-02-01' ORDER BY tenant"
        ))).all()
    assert daily == (Decimal("106.4333456789"), 6, 1)
    assert monthly == [("acme", Decimal("0.4333456789")), ("globex", Decimal("7"))]


def test_usage_cli(database_url: str, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str], recorded: None) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    args = ["usage", "--by", "tenant,model", "--since", "2026-02-01", "--until", "2026-03-01"]
    assert main([*args, "--csv"]) == 0
    parsed = parse_csv(capsys.readouterr().out)
    assert [(r["tenant"], r["model"], r["cost_usd"]) for r in parsed] == [
        ("acme", "gpt-4o-mini", "0.1000123456"), ("acme", "llama", "0.3333333333"),
        ("globex", "gpt-4o-mini", "7.0000000000"),
    ]
    assert main(args) == 0
    assert "0.3333333333" in capsys.readouterr().out
