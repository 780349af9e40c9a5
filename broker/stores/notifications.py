"""Final results announced through PostgreSQL: the ledger NOTIFYs, ingress LISTENs.

A long poll (`GET /v1/requests/{id}?wait=60`) used to ask the database twice a second
until the answer came. Now the ledger, in the transaction that records final results,
sends their ids on one channel (`NOTIFY` is delivered at commit, so a woken poll finds
the row), and each ingress instance listens on one connection and wakes the polls
waiting for those ids. A poll still looks itself now and then (`FALLBACK_POLL_S`), so a
notification lost with a broken connection costs latency, never an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("sluice.ingress")

FINAL_RESULTS_CHANNEL = "sluice_final_results"
# PostgreSQL refuses payloads of 8000 bytes or more; ids are ~36 bytes, so ~190 a message.
_PAYLOAD_LIMIT = 7900
# How often a waiting poll looks in the database anyway while notifications flow.
FALLBACK_POLL_S = 5.0

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def payloads(request_ids: Iterable[str]) -> list[str]:
    """`request_ids` comma-joined into as few payloads as PostgreSQL accepts."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for request_id in request_ids:
        if current and size + len(request_id) + 1 > _PAYLOAD_LIMIT:
            chunks.append(",".join(current))
            current, size = [], 0
        current.append(request_id)
        size += len(request_id) + 1
    if current:
        chunks.append(",".join(current))
    return chunks


async def notify_final_results(connection: AsyncConnection, request_ids: Iterable[str]) -> None:
    """Announce, at the commit of `connection`'s transaction, that these requests are final."""
    for payload in payloads(request_ids):
        await connection.execute(_NOTIFY, {"channel": FINAL_RESULTS_CHANNEL, "payload": payload})


class FinalResultListener:
    """Wakes whoever watches a request id when the ledger announces its final result.

    Args:
        engine: One of its connections is held for listening while this runs.
        health_check_s: How often the listening connection is checked (a connection that
            died silently would otherwise leave every poll on the fallback interval).
        retry_s: The pause before listening again after the connection was lost.
    """

    def __init__(self, engine: AsyncEngine, *, health_check_s: float = 15.0,
                 retry_s: float = 2.0) -> None:
        self._engine = engine
        self._health_check_s = health_check_s
        self._retry_s = retry_s
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    async def start(self) -> None:
        """Listen in the background (and keep trying while PostgreSQL is away)."""
        self._task = asyncio.create_task(self._keep_listening())

    async def stop(self) -> None:
        """Stop listening and give the connection back."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.contextmanager
    def watch(self, request_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `request_id` is announced final, while the block runs.

        Watch before looking the request up, so an announcement in between is not missed.
        """
        event = asyncio.Event()
        self._watchers.setdefault(request_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(request_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[request_id]

    def _announced(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        for request_id in payload.split(","):
            for event in self._watchers.get(request_id, ()):
                event.set()

    async def _keep_listening(self) -> None:
        while True:
            try:
                async with self._engine.connect() as connection:
                    raw = await connection.get_raw_connection()
                    driver = raw.driver_connection
                    assert driver is not None
                    await driver.add_listener(FINAL_RESULTS_CHANNEL, self._announced)
                    try:
                        self.listening = True
                        self._wake_all()  # anything announced while we were away
                        while True:
                            await asyncio.sleep(self._health_check_s)
                            await asyncio.wait_for(driver.fetchval("SELECT 1"), 5.0)
                    finally:  # the connection goes back to the pool: not listening
                        with contextlib.suppress(Exception):
                            await driver.remove_listener(FINAL_RESULTS_CHANNEL,
                                                         self._announced)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep trying: polls fall back to looking themselves
                if self.listening:
                    log.warning("listening for final results stopped (%s); polls look in "
                                "the database meanwhile", exc)
            finally:
                self.listening = False
            await asyncio.sleep(self._retry_s)

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()
