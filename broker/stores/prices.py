"""The price catalog: USD per million tokens, per model and deployment, with history.

The catalog is sluicegate's one price source: the ledger charges from it, and admission,
worker reservations and batch holds estimate from it. Prices live in the `prices` table,
seeded from the shipped `prices.yaml` by migration 0002, edited with `sluice prices set`,
and fed from the configuration file: a deployment's `input_usd_per_mtok` /
`output_usd_per_mtok` are imported by every worker and ingress at start
(`import_config_prices`) as that deployment's price for each model it serves, effective
from then on, whenever the catalog's price in force differs.

A price is never updated in place for a new period: a row with a later `effective_from`
takes over from that moment, so usage recorded late (a ledger catching up after an
outage) is still charged the price of its own time.

Which price applies to a call that finished at `t` on deployment `d` of model `m`: the
latest row of (`m`, `d`) effective at `t`; failing that, the latest model-wide row
(`m`, NULL) effective at `t`; failing that, none (the ledger records cost NULL and warns,
never a silent zero).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.config import SluiceConfig
from broker.errors import ConfigError
from broker.reloading import Reloading
from broker.stores.database import database_errors
from broker.stores.tables import prices

CATALOG = Path(__file__).with_name("prices.yaml")
_MILLION = Decimal(1_000_000)
_CACHE_WRITE_MULTIPLIER = Decimal("1.25")
_CACHE_WRITE_1H_MULTIPLIER = Decimal("2")
_BATCH_DISCOUNT = Decimal("0.5")
_UNIQUE = "uq_prices_model_deployment_effective_from"

PerMillion = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=10)]


class PriceSpec(BaseModel):
    """One price as written in the catalog file or given to `sluice prices set`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Annotated[str, Field(min_length=1)]
    deployment: str | None = None
    input_usd_per_mtok: PerMillion
    output_usd_per_mtok: PerMillion
    cached_input_usd_per_mtok: PerMillion | None = None
    cache_write_input_usd_per_mtok: PerMillion | None = None
    cache_write_1h_input_usd_per_mtok: PerMillion | None = None
    batch_input_usd_per_mtok: PerMillion | None = None
    batch_output_usd_per_mtok: PerMillion | None = None
    currency: str = "USD"
    effective_from: AwareDatetime


@dataclass(frozen=True, slots=True)
class Price:
    """A stored price."""

    id: int
    model: str
    deployment: str | None
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cached_input_usd_per_mtok: Decimal | None
    currency: str
    effective_from: datetime
    cache_write_input_usd_per_mtok: Decimal | None = None
    cache_write_1h_input_usd_per_mtok: Decimal | None = None
    batch_input_usd_per_mtok: Decimal | None = None
    batch_output_usd_per_mtok: Decimal | None = None

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
             cache_write_input_tokens: int = 0, *, batch: bool = False,
             cache_write_1h_input_tokens: int = 0) -> Decimal:
        """What a call cost.

        Cached (read) and cache-written input tokens are part of `input_tokens` (OpenAI's
        convention), and one-hour cache writes part of the cache writes; each is charged at
        its own price: a cache hit at the cached price (the input price when there is none:
        with no known discount the full rate is the safe upper bound), a cache write at the
        cache-write price (1.25 x input when there is none: Anthropic's five-minute cache),
        a one-hour cache write at its price (2 x input when there is none). A call made
        through a provider's batch API (`batch`) is charged the batch prices, half the
        standard ones when none are set (OpenAI's and Anthropic's discount); the input-side
        discount applies to cache reads and writes too, as both providers apply it.
        """
        input_price = self.input_usd_per_mtok
        read_price = _or(self.cached_input_usd_per_mtok, input_price)
        write_price = _or(self.cache_write_input_usd_per_mtok,
                          input_price * _CACHE_WRITE_MULTIPLIER)
        write_1h_price = _or(self.cache_write_1h_input_usd_per_mtok,
                             input_price * _CACHE_WRITE_1H_MULTIPLIER)
        output_price = self.output_usd_per_mtok
        if batch:
            input_factor = _BATCH_DISCOUNT
            if self.batch_input_usd_per_mtok is not None and input_price > 0:
                input_factor = self.batch_input_usd_per_mtok / input_price
            input_price, read_price, write_price, write_1h_price = (
                price * input_factor
                for price in (input_price, read_price, write_price, write_1h_price))
            output_price = _or(self.batch_output_usd_per_mtok, output_price * _BATCH_DISCOUNT)
        write_5m = cache_write_input_tokens - cache_write_1h_input_tokens
        uncached = input_tokens - cached_input_tokens - cache_write_input_tokens
        total = (
            input_price * uncached
            + read_price * cached_input_tokens
            + write_price * write_5m
            + write_1h_price * cache_write_1h_input_tokens
            + output_price * output_tokens
        )
        return total / _MILLION


def _or(price: Decimal | None, default: Decimal) -> Decimal:
    return default if price is None else price


class PriceBook:
    """Prices of some models, all periods, answering "which price applied then?"."""

    def __init__(self, rows: Iterable[Price]):
        # Newest first, so the first effective row found is the one in force.
        self._rows = sorted(rows, key=lambda price: price.effective_from, reverse=True)

    def find(self, model: str, deployment: str | None, at: datetime) -> Price | None:
        """The price in force for `model` on `deployment` at `at`, or None."""
        model_wide: Price | None = None
        for price in self._rows:
            if price.model != model or price.effective_from > at:
                continue
            if deployment is not None and price.deployment == deployment:
                return price  # a deployment's own price wins over the model-wide one
            if price.deployment is None and model_wide is None:
                model_wide = price
        return model_wide


    def in_force(self, model: str, at: datetime) -> list[Price]:
        """The price in force at `at` for `model` on each deployment (and model-wide)."""
        found: dict[str | None, Price] = {}
        for price in self._rows:
            if price.model == model and price.effective_from <= at:
                found.setdefault(price.deployment, price)
        return list(found.values())


def _price(row: Any) -> Price:  # a Row of the prices table
    return Price(
        id=row.id,
        model=row.model,
        deployment=row.deployment,
        input_usd_per_mtok=row.input_usd_per_mtok,
        output_usd_per_mtok=row.output_usd_per_mtok,
        cached_input_usd_per_mtok=row.cached_input_usd_per_mtok,
        currency=row.currency,
        effective_from=row.effective_from,
        cache_write_input_usd_per_mtok=row.cache_write_input_usd_per_mtok,
        cache_write_1h_input_usd_per_mtok=row.cache_write_1h_input_usd_per_mtok,
        batch_input_usd_per_mtok=row.batch_input_usd_per_mtok,
        batch_output_usd_per_mtok=row.batch_output_usd_per_mtok,
    )


def load_catalog(path: Path = CATALOG) -> list[PriceSpec]:
    """Read a price catalog file (`prices: [...]`).

    Raises:
        ConfigError: the file is missing or invalid; the message names the bad entry.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return [PriceSpec.model_validate(item) for item in data.get("prices", [])]
    except (OSError, yaml.YAMLError, ValidationError, AttributeError) as exc:
        raise ConfigError(f"price catalog {path}: {exc}") from exc


def upsert_statement(specs: Sequence[PriceSpec]) -> Any:
    """Insert prices; one already there for the same model, deployment and date is replaced."""
    statement = insert(prices).values([spec.model_dump() for spec in specs])
    return statement.on_conflict_do_update(
        constraint=_UNIQUE,
        set_={
            column: statement.excluded[column]
            for column in (
                "input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok",
                "cache_write_input_usd_per_mtok", "cache_write_1h_input_usd_per_mtok",
                "batch_input_usd_per_mtok", "batch_output_usd_per_mtok", "currency",
            )
        },
    ).returning(*prices.c)


async def set_prices(engine: AsyncEngine, specs: Sequence[PriceSpec]) -> list[Price]:
    """Store prices (see `upsert_statement`).

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    if not specs:
        return []
    with database_errors(engine):
        async with engine.begin() as connection:
            rows = (await connection.execute(upsert_statement(specs))).all()
    return [_price(row) for row in rows]


async def list_prices(engine: AsyncEngine, model: str | None = None) -> list[Price]:
    """Every stored price (all periods), by model, deployment and date."""
    statement = select(prices).order_by(
        prices.c.model, prices.c.deployment.nulls_first(), prices.c.effective_from
    )
    if model is not None:
        statement = statement.where(prices.c.model == model)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return [_price(row) for row in rows]


async def price_book(connection: AsyncConnection, models: Iterable[str]) -> PriceBook:
    """Every price of `models`, read inside the caller's transaction (one query)."""
    wanted = sorted(set(models))
    if not wanted:
        return PriceBook([])
    rows = (await connection.execute(select(prices).where(prices.c.model.in_(wanted)))).all()
    return PriceBook(_price(row) for row in rows)


_CONFIG_PRICE_FIELDS = (
    "input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok",
    "cache_write_input_usd_per_mtok", "cache_write_1h_input_usd_per_mtok",
    "batch_input_usd_per_mtok", "batch_output_usd_per_mtok")
"""A deployment's prices in the configuration file, as the catalog names them."""


def config_price_specs(config: SluiceConfig, book: PriceBook, now: datetime) -> list[PriceSpec]:
    """The configuration's deployment prices the catalog does not have in force at `now`."""
    specs = []
    for model, settings in config.models.items():
        # Deployments reached through A/B variants, a canary or a shadow are priced too.
        for name in dict.fromkeys([*settings.deployments,
                                   *settings.routing.deployments().values()]):
            deployment = config.deployments[name]
            if deployment.input_usd_per_mtok is None or deployment.output_usd_per_mtok is None:
                continue
            current = book.find(model, name, now)
            configured = {field: getattr(deployment, field) for field in _CONFIG_PRICE_FIELDS}
            if deployment.cached_input_usd_per_mtok is None and current is not None:
                # No cached-input rate in the config: keep the catalog's, if it had one.
                configured["cached_input_usd_per_mtok"] = current.cached_input_usd_per_mtok
            if (current is not None and current.deployment == name
                    and all(getattr(current, field) == value
                            for field, value in configured.items())):
                continue
            specs.append(PriceSpec(model=model, deployment=name, **configured,
                                   effective_from=now))
    return specs


async def import_config_prices(engine: AsyncEngine, config: SluiceConfig,
                               now: datetime) -> list[Price]:
    """Store the configuration's prices the catalog lacks (see `config_price_specs`).

    Idempotent, and safe when several processes start at once: the same price again is
    skipped, and the same model, deployment and moment again replaces, not duplicates.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    with database_errors(engine):
        async with engine.connect() as connection:
            book = await price_book(connection, config.models)
    return await set_prices(engine, config_price_specs(config, book, now))


class PriceCache:
    """Every stored price, reloaded at most once per `ttl_s` (one query for all models).

    For estimates on hot paths (ingress admission): a new price takes effect there within
    `ttl_s`, while the ledger always charges the price in force when a call finished.
    """

    def __init__(self, engine: AsyncEngine, *, ttl_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        async def load() -> PriceBook:
            return PriceBook(await list_prices(engine))

        self._book = Reloading(load, ttl_s=ttl_s, clock=clock)

    async def book(self) -> PriceBook:
        """The price book, at most `ttl_s` old (the last one read while PostgreSQL is away).

        Raises:
            DatabaseUnavailable: PostgreSQL cannot be reached and nothing was ever loaded.
        """
        return await self._book.get()
