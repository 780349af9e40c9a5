"""A value reloaded at most once per TTL, for small tables read on hot paths.

Tenant settings and the price catalog are read on every admission and every ledger
batch, but change rarely: each is one query for the whole table, reused for `ttl_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from broker.errors import DatabaseUnavailable

T = TypeVar("T")


class Reloading(Generic[T]):
    """`load()`'s answer, at most `ttl_s` old.

    Callers arriving together while it is stale share one load. If the source is
    unavailable, the last answer is served (callers without limits must not get 503s
    because a settings table could not be re-read) and the load is tried again after
    `retry_s`, not on every call.
    """

    def __init__(self, load: Callable[[], Awaitable[T]], *, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic, retry_s: float = 5.0) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._clock = clock
        self._retry_s = retry_s
        self._loaded_at = float("-inf")
        self._value: T | None = None
        self._loading = asyncio.Lock()

    def _stale(self) -> bool:
        return self._clock() - self._loaded_at >= self._ttl_s

    async def get(self) -> T:
        """The value.

        Raises:
            DatabaseUnavailable: the source is unavailable and nothing was ever loaded.
        """
        if self._stale():
            async with self._loading:
                if self._stale():
                    try:
                        self._value = await self._load()
                        self._loaded_at = self._clock()
                    except DatabaseUnavailable:
                        if self._value is None:
                            raise  # nothing to fall back on
                        self._loaded_at = self._clock() - self._ttl_s + self._retry_s
        assert self._value is not None
        return self._value

    def invalidate(self) -> None:
        """Load again on the next `get`."""
        self._loaded_at = float("-inf")
