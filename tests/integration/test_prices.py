"""The price catalog: seeding, the CLI, and the ledger charging the price of each call's time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.config import SluiceConfig, parse_config
from broker.kafka import topics_for
from broker.settings import KafkaSettings
from broker.stores.prices import (
    CATALOG,
    Price,
    PriceBook,
    PriceSpec,
    import_config_prices,
    list_prices,
    load_catalog,
    set_prices,
)
from broker.stores.tables import usage_events
from sluice.cli import main
from tests.integration.test_ledger import _equals, eventually, produce, running_ledger, usage

pytestmark = pytest.mark.integration
T1 = datetime(2026, 3, 1, tzinfo=UTC)
T2 = datetime(2026, 4, 1, tzinfo=UTC)



def spec(input_price: str, output_price: str, at: datetime, deployment: str | None = None,
         model: str = "m") -> PriceSpec:
    return PriceSpec(model=model, deployment=deployment, input_usd_per_mtok=Decimal(input_price),
                     output_usd_per_mtok=Decimal(output_price), effective_from=at)


def test_price_book_picks_the_price_in_force() -> None:
    def price(id_: int, at: datetime, deployment: str | None = None) -> Price:
        return Price(id_, "m", deployment, Decimal(id_), Decimal(id_), None, "USD", at)

    book = PriceBook([price(1, T1), price(2, T2), price(3, T1, "d")])
    assert book.find("m", "x", T1 - timedelta(seconds=1)) is None
    assert book.find("m", "x", T1).id == 1  # type: ignore[union-attr]
    assert book.find("m", "x", T2 + timedelta(days=9)).id == 2  # type: ignore[union-attr]
    # A deployment's own price wins over a newer model-wide one.
    assert book.find("m", "d", T2).id == 3  # type: ignore[union-attr]
    assert book.find("other", "d", T2) is None
    cost = Price(9, "m", None, Decimal("2"), Decimal("8"), Decimal("0.5"), "USD", T1).cost(
        1_000_000, 500_000, cached_input_tokens=400_000
    )
    assert cost == Decimal("1.2") + Decimal("0.2") + Decimal("4")


async def test_catalog_is_seeded_by_migration(engine: AsyncEngine) -> None:
    shipped = load_catalog(CATALOG)
    stored = await list_prices(engine)
    assert {(p.model, p.input_usd_per_mtok) for p in stored} == {
        (s.model, s.input_usd_per_mtok) for s in shipped
    }
    assert any(p.model == "gpt-4o-mini" for p in stored)


async def test_price_change_takes_effect_at_its_date(
    kafka_settings: KafkaSettings, engine: AsyncEngine
) -> None:
    await set_prices(engine, [spec("1", "2", T1), spec("10", "20", T2), spec("5", "5", T1, "d")])
    # Same model, deployment and date again: the price is corrected, not duplicated.
    await set_prices(engine, [spec("100", "200", T2)])
    await set_prices(engine, [spec("10", "20", T2)])
    assert len(await list_prices(engine, "m")) == 3

    events = {
        "before": usage("before", model="m", finished_at=T1 - timedelta(hours=1), cost_usd=None),
        "fallback": usage("fallback", model="m", finished_at=T1 - timedelta(hours=1),
                          cost_usd=Decimal("0.5")),
        "first": usage("first", model="m", finished_at=T2 - timedelta(seconds=1)),
        "second": usage("second", model="m", finished_at=T2),
        "deployment": usage("deployment", model="m", deployment="d", finished_at=T2),
    }
    async with running_ledger(kafka_settings, engine):
        await produce(kafka_settings, topics_for(kafka_settings).usage, *events.values())

        async def count() -> int:
            async with engine.connect() as connection:
                return len((await connection.execute(select(usage_events.c.event_id))).all())

        await eventually(lambda: _equals(count(), len(events)))
    async with engine.connect() as connection:
        rows = {
            row.event_id: (row.cost_usd, row.price_id)
            for row in await connection.execute(select(usage_events))
        }
    tokens_in, tokens_out = 12, 34  # the `usage` helper's counts
    prices = {p.effective_from: p for p in await list_prices(engine, "m") if not p.deployment}
    assert rows["before"] == (None, None)  # unknown price: NULL, never zero
    # An event of an earlier worker release carrying its own cost keeps it.
    assert rows["fallback"] == (Decimal("0.5"), None)
    assert rows["first"] == (Decimal(tokens_in * 1 + tokens_out * 2) / 10**6, prices[T1].id)
    assert rows["second"] == (Decimal(tokens_in * 10 + tokens_out * 20) / 10**6, prices[T2].id)
    assert rows["deployment"][0] == Decimal((tokens_in + tokens_out) * 5) / 10**6


def test_prices_cli(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    assert main(["prices", "set", "my-model", "--input", "0.3", "--output", "1.2",
                 "--cached-input", "0.1", "--effective-from", "2026-05-01T00:00:00Z"]) == 0
    assert "my-model from 2026-05-01" in capsys.readouterr().out
    assert main(["prices", "set", "my-model", "--input", "-1", "--output", "1"]) == 2
    capsys.readouterr()
    assert main(["prices", "list", "--model", "my-model"]) == 0
    listing = capsys.readouterr().out
    assert "my-model" in listing and "0.3000000000" in listing and "gpt-4o" not in listing


async def test_config_prices_are_imported_once_and_again_when_they_change(
    engine: AsyncEngine,
) -> None:
    def config(output_price: str) -> SluiceConfig:
        return parse_config({
            "models": {"imp-a": {"deployments": ["d1", "free"]}, "imp-b": {"deployments": ["d1"]}},
            "deployments": {
                "d1": {"provider": "simulated", "model": "x", "input_usd_per_mtok": "1.5",
                       "output_usd_per_mtok": output_price},
                "free": {"provider": "simulated", "model": "x"},  # no price: none imported
            },
        })

    first = await import_config_prices(engine, config("2"), T1)
    assert {(p.model, p.deployment, p.output_usd_per_mtok) for p in first} == {
        ("imp-a", "d1", Decimal("2")), ("imp-b", "d1", Decimal("2"))}
    # Every worker and ingress imports at start: the same prices again store nothing.
    assert await import_config_prices(engine, config("2"), T2) == []
    changed = await import_config_prices(engine, config("3"), T2)
    assert {(p.model, p.effective_from) for p in changed} == {("imp-a", T2), ("imp-b", T2)}
    stored = await list_prices(engine, "imp-a")
    history = [(p.effective_from, p.output_usd_per_mtok) for p in stored]
    assert history == [(T1, Decimal("2")), (T2, Decimal("3"))]


async def test_a_deployments_cache_and_batch_rates_are_imported_with_its_price(
    engine: AsyncEngine,
) -> None:
    def config(**rates: str) -> SluiceConfig:
        return parse_config({
            "models": {"claude-imp": {"deployments": ["anthropic-d"]}},
            "deployments": {"anthropic-d": {
                "provider": "anthropic", "model": "claude-x", "input_usd_per_mtok": "3",
                "output_usd_per_mtok": "15", **rates}},
        })

    rates = {"cached_input_usd_per_mtok": "0.3", "cache_write_input_usd_per_mtok": "3.75",
             "cache_write_1h_input_usd_per_mtok": "6", "batch_input_usd_per_mtok": "1.5",
             "batch_output_usd_per_mtok": "7.5"}
    [price] = await import_config_prices(engine, config(**rates), T1)
    assert {name: str(getattr(price, name).normalize()) for name in rates} == rates
    # Unchanged: nothing new; one rate changed: a new price from then on.
    assert await import_config_prices(engine, config(**rates), T2) == []
    [changed] = await import_config_prices(
        engine, config(**{**rates, "cache_write_1h_input_usd_per_mtok": "7"}), T2)
    assert changed.cache_write_1h_input_usd_per_mtok == Decimal("7")
    assert changed.cached_input_usd_per_mtok == Decimal("0.3")
