"""A tiny HTTP status endpoint of one worker process: `GET /status` (JSON), `GET /ready`.

`/ready` answers 200 once the worker's request consumers have joined their groups and
own their partitions (503 before): a readiness probe, and what `sluice dev` waits for
before it says the stack is running.

Breaker state lives in the worker that makes the calls, and ingress runs in another
process, so each worker serves its own state (`sluice worker --status-port N`); operators
and monitoring scrape the workers. Plain asyncio streams: one read-only endpoint does not
justify a web framework in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson

Snapshot = Callable[[], dict[str, Any]]


class StatusServer:
    """Serves `snapshot()` as JSON at `GET /status`, `ready()` at `GET /ready`, `/health`."""

    def __init__(self, snapshot: Snapshot, host: str, port: int,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self._snapshot = snapshot
        self._ready = ready
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen in the background."""
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            # Drain the headers; the body of a GET is ignored.
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode(errors="replace").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else ""
            if len(parts) > 1 and parts[0] == "GET" and path in ("/status", "/health"):
                body = orjson.dumps(self._snapshot() if path == "/status" else {"status": "ok"})
                status = "200 OK"
            elif len(parts) > 1 and parts[0] == "GET" and path == "/ready":
                ready = self._ready()
                body = orjson.dumps({"ready": ready})
                status = "200 OK" if ready else "503 Service Unavailable"
            else:
                body, status = b'{"error":"not found"}', "404 Not Found"
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
