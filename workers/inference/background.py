"""The pool's helpers that run beside its request consumers.

- `RetryScheduler`: releases delayed retries back to the request topics when due.
- `CancelListener`: keeps the processor's set of cancelled request ids current.
- `OpsServer` (only with a status port, `broker.ops`): breakers, retries and cancels as
  JSON at `/status`; `/readyz` once the request consumers own their partitions.

All stop when the pool's `stop` event is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from broker.kafka import Producer
from broker.ops import OpsServer, Readiness, flag
from broker.settings import KafkaSettings, WorkerSettings
from schemas import Topics
from workers.inference.cancels import CancelledIds, CancelListener
from workers.inference.retries import RetryScheduler

log = logging.getLogger("sluice.worker")


class Background:
    """Starts and stops the pool's helpers.

    Args:
        kafka, producer, topics, models: what the retry scheduler and cancel listener use.
        cancelled: the processor's set of cancelled ids, kept current by the listener.
        worker: the status endpoint's address (none without a port).
        pool_state: the pool's own part of `GET /status`.
        ready: whether the pool owns its partitions (`GET /ready`).
        stop: set when the pool stops; the helpers end with it.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        producer: Producer,
        topics: Topics,
        models: Sequence[str],
        cancelled: CancelledIds,
        worker: WorkerSettings,
        *,
        pool_state: Callable[[], dict[str, Any]],
        ready: Callable[[], bool],
        stop: asyncio.Event,
    ) -> None:
        self._stop = stop
        self._pool_state = pool_state
        self._topics = [*(topics.retry(m) for m in models), topics.cancels]
        self._status_address = f"http://{worker.status_host}:{{}}/status"
        self.retries = RetryScheduler(kafka, producer, topics, list(models))
        self.cancels = CancelListener(kafka, topics, cancelled)
        port = worker.status_port
        consumers = flag(ready, "request consumers have not joined their groups yet")
        self.status = (OpsServer(worker.status_host, port, snapshot=self.snapshot,
                                 readiness=Readiness({"kafka_consumers": consumers}))
                       if port is not None else None)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def topics(self) -> list[str]:
        """Topics the helpers read, to be created up front."""
        return list(self._topics)

    async def start(self) -> None:
        """Start every helper (call after the pool's producer started)."""
        self._tasks = [
            asyncio.create_task(self.retries.run(self._stop)),
            asyncio.create_task(self.cancels.run(self._stop)),
        ]
        if self.status is not None:
            await self.status.start()
            log.info("worker status on %s", self._status_address.format(self.status.port))

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
        """What `GET /status` answers: the pool's state and the helpers'."""
        return {
            **self._pool_state(),
            "retries": {"held": self.retries.held, "republished": self.retries.republished},
            "cancelled_known": len(self.cancels.cancelled),
        }
