"""Cost at record time: each usage row is charged the price in force when the call finished.

The price comes from the `prices` table, read once per batch inside the batch's own
transaction (so a price and the rows charged with it are consistent). The catalog is the
one price source: the config file's prices reach it through `import_config_prices`.
Input tokens served from the provider's prompt cache are charged the price's cached-input
rate, those written to it the cache-write rate, and calls made through a provider's batch
API its batch rates (`Price.cost`). Without a price, cost stays NULL and a warning names
the model and deployment, because a silent zero would under-bill (an event that already
carries a cost, from a worker of an earlier release, keeps it).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from broker.stores.prices import PriceBook, price_book
from workers.ledger.rows import LedgerRow

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncConnection

logger = logging.getLogger(__name__)


async def price_usage(connection: AsyncConnection, rows: Sequence[LedgerRow]) -> None:
    """Fill in `cost_usd` and `price_id` of usage rows (in place; idempotent)."""
    if not rows:
        return
    charge(await price_book(connection, (row.values["model"] for row in rows)), rows)


def charge(book: PriceBook, rows: Sequence[LedgerRow]) -> None:
    """Fill in `cost_usd` and `price_id` of usage rows from `book` (in place; no I/O)."""
    unpriced: Counter[tuple[str, str]] = Counter()
    for row in rows:
        values = row.values
        price = book.find(values["model"], values["deployment"], values["finished_at"])
        if price is not None:
            # A price without a cached rate (NULL) charges cache hits the input rate
            # (`Price.cost`): with no known discount the full rate is the safe upper bound.
            values["cost_usd"] = price.cost(
                values["input_tokens"],
                values["output_tokens"],
                values.get("cached_input_tokens", 0),
                values.get("cache_write_input_tokens", 0),
                batch=values.get("service_tier") == "batch",
                cache_write_1h_input_tokens=values.get("cache_write_1h_input_tokens", 0),
            )
            values["price_id"] = price.id
        elif values.get("cost_usd") is None:
            unpriced[(values["model"], values["deployment"])] += 1
    for (model, deployment), count in sorted(unpriced.items()):
        logger.warning(
            "ledger: no price for model %r on deployment %r; %d usage rows recorded with cost "
            "NULL (add one with `sluice prices set`)", model, deployment, count,
        )
