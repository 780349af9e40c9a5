"""The ledger charges prompt-cache hits the cached-input price, exactly, in PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.kafka import topics_for
from broker.settings import KafkaSettings
from broker.stores.prices import PriceSpec, list_prices, set_prices
from broker.stores.tables import usage_events
from tests.integration.stack import eventually
from tests.integration.test_ledger import _equals, produce, running_ledger, usage

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, tzinfo=UTC)



async def test_cached_input_tokens_are_charged_the_cached_price(
    kafka_settings: KafkaSettings, engine: AsyncEngine
) -> None:
    await set_prices(engine, [
        PriceSpec(model="cached", input_usd_per_mtok=Decimal("2.5"),
                  output_usd_per_mtok=Decimal("10"), cached_input_usd_per_mtok=Decimal("1.25"),
                  effective_from=T0),
        # No cached rate: cache hits cost the input price.
        PriceSpec(model="uncached", input_usd_per_mtok=Decimal("3"),
                  output_usd_per_mtok=Decimal("15"), effective_from=T0),
    ])
    events = [
        usage("hit", model="cached", input_tokens=3000, cached_input_tokens=2048,
              output_tokens=500, finished_at=T0),
        usage("miss", model="cached", input_tokens=3000, output_tokens=500, finished_at=T0),
        usage("no-rate", model="uncached", input_tokens=3000, cached_input_tokens=2048,
              output_tokens=500, finished_at=T0),
    ]
    async with running_ledger(kafka_settings, engine):
        await produce(kafka_settings, topics_for(kafka_settings).usage, *events)

        async def count() -> int:
            async with engine.connect() as connection:
                return len((await connection.execute(select(usage_events.c.event_id))).all())

        await eventually(lambda: _equals(count(), len(events)))
    async with engine.connect() as connection:
        rows = {row.event_id: row for row in await connection.execute(select(usage_events))}
    prices = {price.model: price.id for price in await list_prices(engine)}

    hit = rows["hit"]
    assert hit.cached_input_tokens == 2048 and hit.price_id == prices["cached"]
    # 952 uncached x $2.5/M + 2048 cached x $1.25/M + 500 output x $10/M, exact numeric.
    assert hit.cost_usd == Decimal("0.00238") + Decimal("0.00256") + Decimal("0.005")
    assert rows["miss"].cached_input_tokens == 0
    assert rows["miss"].cost_usd == Decimal("0.0075") + Decimal("0.005")
    assert rows["no-rate"].cost_usd == Decimal("0.009") + Decimal("0.0075")


async def test_cache_writes_and_provider_batch_calls_are_charged_their_prices(
    kafka_settings: KafkaSettings, engine: AsyncEngine
) -> None:
    await set_prices(engine, [
        # Anthropic-style: cache reads at a tenth, writes at 1.25x, no batch price named.
        PriceSpec(model="claude", input_usd_per_mtok=Decimal("3"),
                  output_usd_per_mtok=Decimal("15"), cached_input_usd_per_mtok=Decimal("0.3"),
                  effective_from=T0),
        # A price with its own cache-write and batch rates.
        PriceSpec(model="priced", input_usd_per_mtok=Decimal("2"),
                  output_usd_per_mtok=Decimal("8"), cache_write_input_usd_per_mtok=Decimal("4"),
                  batch_input_usd_per_mtok=Decimal("0.8"), batch_output_usd_per_mtok=Decimal("4"),
                  effective_from=T0),
    ])
    events = [
        usage("write", model="claude", input_tokens=3000, cached_input_tokens=1000,
              cache_write_input_tokens=1500, output_tokens=200, finished_at=T0),
        usage("write-1h", model="claude", input_tokens=3000, cached_input_tokens=1000,
              cache_write_input_tokens=1500, cache_write_1h_input_tokens=1000,
              output_tokens=200, finished_at=T0),
        usage("batch", model="claude", input_tokens=1000, output_tokens=1000,
              service_tier="batch", finished_at=T0),
        usage("own-batch", model="priced", input_tokens=1000, cache_write_input_tokens=500,
              output_tokens=1000, service_tier="batch", finished_at=T0),
    ]
    async with running_ledger(kafka_settings, engine):
        await produce(kafka_settings, topics_for(kafka_settings).usage, *events)

        async def count() -> int:
            async with engine.connect() as connection:
                return len((await connection.execute(select(usage_events.c.event_id))).all())

        await eventually(lambda: _equals(count(), len(events)))
    async with engine.connect() as connection:
        rows = {row.event_id: row for row in await connection.execute(select(usage_events))}

    write = rows["write"]
    assert (write.cache_write_input_tokens, write.service_tier) == (1500, "standard")
    # 500 plain x $3/M + 1000 read x $0.3/M + 1500 written x $3.75/M + 200 out x $15/M.
    assert write.cost_usd == (Decimal("0.0015") + Decimal("0.0003") + Decimal("0.005625")
                              + Decimal("0.003"))
    # One-hour cache writes at 2 x input ($6/M), the other 500 written at 1.25 x.
    assert rows["write-1h"].cache_write_1h_input_tokens == 1000
    assert rows["write-1h"].cost_usd == (Decimal("0.0015") + Decimal("0.0003")
                                         + Decimal("0.001875") + Decimal("0.006")
                                         + Decimal("0.003"))
    # Half price through the provider's batch API when the price names no batch rate.
    assert rows["batch"].service_tier == "batch"
    assert rows["batch"].cost_usd == Decimal("0.0015") + Decimal("0.0075")
    # Named batch rates: input 0.8/2 = 0.4 of standard, applied to the cache write too.
    assert rows["own-batch"].cost_usd == (Decimal("0.0004") + Decimal("0.0008")
                                          + Decimal("0.004"))
