"""The pool's helpers that run beside its request consumers.

- `RetryScheduler`: releases delayed retries back to the request topics when due.
- `CancelListener`: keeps the processor's set of cancelled request ids current.
- `StatusServer` (only with a status port): breakers, retries and cancels as JSON.

All stop when the pool's `stop` event is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from workers.inference.cancels import CancelListener
from workers.inference.retries import RetryScheduler
from workers.inference.status import StatusServer

if TYPE_CHECKING:
    from workers.inference.pool import InferencePool

log = logging.getLogger("sluice.worker")


class Background:
    """Starts and stops the pool's helpers."""

    def __init__(self, pool: InferencePool, stop: asyncio.Event) -> None:
        self._pool = pool
        self._stop = stop
        self.retries = RetryScheduler(pool.kafka, pool.producer, pool.topics, pool.models)
        self.cancels = CancelListener(pool.kafka, pool.topics, pool.processor.cancelled)
        port = pool.worker_settings.status_port
        self.status = (
            StatusServer(self.snapshot, pool.worker_settings.status_host, port,
                         ready=pool.ready)
            if port is not None else None
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def topics(self) -> list[str]:
        """Topics the helpers read, to be created up front."""
        return [*(self._pool.topics.retry(m) for m in self._pool.models), self._pool.topics.cancels]

    async def start(self) -> None:
        """Start every helper (call after the pool's producer started)."""
        self._tasks = [
            asyncio.create_task(self.retries.run(self._stop)),
            asyncio.create_task(self.cancels.run(self._stop)),
        ]
        if self.status is not None:
            await self.status.start()
            log.info("worker status on http://%s:%d/status",
                     self._pool.worker_settings.status_host, self.status.port)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Wait for the helpers to notice `stop`; cancel stragglers."""
        if self.status is not None:
            await self.status.stop()
        if not self._tasks:
            return
        done, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("worker helper failed", exc_info=task.exception())

    def snapshot(self) -> dict[str, Any]:
        """What `GET /status` answers."""
        return {
            "models": self._pool.models,
            "breakers": self._pool.processor.breakers.snapshot(),
            "retries": {"held": self.retries.held, "republished": self.retries.republished},
            "cancelled_known": len(self._pool.processor.cancelled),
            "in_flight": self._pool.slots.used,
            "ready": self._pool.ready(),
            "budgets": self._pool.budgets.last_snapshot,
        }
