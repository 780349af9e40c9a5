"""A worker's heartbeat: its models, breakers, in-flight count and readiness, every few
seconds, in PostgreSQL (`worker_heartbeats`), for the console.

Breakers live in the memory of the worker that makes the calls and ingress runs elsewhere;
a row per worker lets the console show every worker's breakers without reaching into the
workers (their `--status-port` stays optional). A failed write is logged and retried at the
next beat: the heartbeat never stops or slows the pool. The row is removed when the worker
stops cleanly; one that stops beating shows as stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker.heartbeats.store import forget_heartbeat, record_heartbeat

if TYPE_CHECKING:  # a handle passed to the store; SQL is its alone
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("sluice.worker.heartbeat")

# What the console shows of a worker's state (`InferencePool.state`); the budgets part
# is left out: the console reads the shared budget state itself.
_SHOWN = ("models", "breakers", "in_flight", "ready", "overflowed_to_batch")


class WorkerHeartbeat:
    """Writes `state()` as this worker's row every `interval_s` until `stop` is set."""

    def __init__(self, engine: AsyncEngine, state: Callable[[], dict[str, Any]], *,
                 interval_s: float = 5.0, worker_id: str | None = None) -> None:
        self._engine = engine
        self._state = state
        self.interval_s = interval_s
        host = socket.gethostname()
        self.worker_id = worker_id or f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._started_at = datetime.now(UTC)
        self.beats = 0

    async def beat(self) -> None:
        """Write the row once (raises what the store raises)."""
        state = self._state()
        await record_heartbeat(
            self._engine, worker_id=self.worker_id, host=socket.gethostname(), pid=os.getpid(),
            models=list(state.get("models", [])),
            state={key: state[key] for key in _SHOWN if key in state},
            started_at=self._started_at)
        self.beats += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until `stop` is set, then remove the row."""
        while not stop.is_set():
            try:
                await self.beat()
            # Anything (a missing migration too): the console loses a row, the worker
            # must not lose its requests.
            except Exception as exc:
                log.warning("heartbeat not written (%s); next try in %.0fs", exc, self.interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
        with contextlib.suppress(Exception):
            await forget_heartbeat(self._engine, self.worker_id)
