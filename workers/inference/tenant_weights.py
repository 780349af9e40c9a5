"""Tenants' weights, as a worker knows them, for fair share (`tenants.weight`, default 1).

A tenant of weight 2 gets twice the turns of a tenant of weight 1 at every budget gate
(`workers.inference.fair_queue`) and twice the slots of a worker before its requests
overflow to the batch topic (`workers.inference.pool`). The weights are read again every
`refresh_s`; while PostgreSQL is away the last ones stay in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger("sluice.worker")


class TenantWeights:
    """`weights(tenant)`: the tenant's weight (1 when it has none, or nothing was read).

    Args:
        load: Reads every tenant's weight (None: everyone weighs 1, e.g. unit tests).
        refresh_s: How often `run` reads them again.
    """

    def __init__(self, load: Callable[[], Awaitable[Mapping[str, float]]] | None = None, *,
                 refresh_s: float = 30.0) -> None:
        self._load = load
        self._refresh_s = refresh_s
        self._weights: dict[str, float] = {}

    def __call__(self, tenant: str) -> float:
        return self._weights.get(tenant, 1.0)

    async def refresh(self) -> None:
        """Read the weights now (nothing to read: nothing changes)."""
        if self._load is not None:
            self._weights = dict(await self._load())

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until `stop` is set; a failed read keeps the weights as they were."""
        while not stop.is_set() and self._load is not None:
            try:
                await self.refresh()
            except Exception as exc:  # the worker keeps serving with what it knows
                log.warning("reading tenant weights failed (%s); keeping the last ones", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._refresh_s)
