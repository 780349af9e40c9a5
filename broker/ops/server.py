"""The operations port of a long-running process: liveness, readiness, status, metrics.

| path | answers |
|---|---|
| `GET /livez` | 200 while the event loop runs (it is the event loop answering) |
| `GET /readyz` | 200 when every readiness check passes; else 503 naming what is not ready |
| `GET /status` | the process's JSON snapshot (breakers, retries…; or the readiness checks) |
| `GET /metrics` | whatever the injected metrics source renders (404 without one) |
| `GET /ready`, `GET /health` | the older names of `/readyz` and `/livez`, kept for callers |

Liveness and readiness differ on purpose: an orchestrator restarts a process that is not
live, but only stops routing to (or waits for) one that is not ready. A worker whose
PostgreSQL is away is alive and should not be restarted; it is not ready.

Every process (`sluice worker`, `ledger`, `deliver`) serves one such port
(`SLUICE_OPS_PORT`, `--ops-port`). Plain asyncio streams: a handful of read-only paths do
not justify a web framework in the workers, and nothing here may add a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson

from broker.ops.readiness import Readiness

Snapshot = Callable[[], dict[str, Any]]
MetricsSource = Callable[[], tuple[bytes, str]]
"""Renders the metrics exposition: (body, content type)."""

_JSON = "application/json"
_READ_TIMEOUT_S = 5.0


class OpsServer:
    """Serves one process's operations paths (see the module) on `host:port`.

    Args:
        host, port: where to listen (port 0: any free port, see `port`).
        readiness: the checks behind `/readyz` (none: always ready).
        snapshot: the body of `/status`; without one, `/status` shows the checks.
        metrics: renders `/metrics`; None answers 404 (metrics not enabled).
    """

    def __init__(self, host: str, port: int, *, readiness: Readiness | None = None,
                 snapshot: Snapshot | None = None, metrics: MetricsSource | None = None) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness or Readiness({})
        self._snapshot = snapshot
        self._metrics = metrics
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

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def answer(self, method: str, path: str) -> tuple[int, bytes, str]:
        """Status code, body and content type for one request (the routing, testable)."""
        if method not in ("GET", "HEAD"):
            return 405, orjson.dumps({"error": "method not allowed"}), _JSON
        if path in ("/livez", "/health"):
            return 200, orjson.dumps({"status": "ok"}), _JSON
        if path in ("/readyz", "/ready"):
            verdict = await self._readiness.evaluate()
            return (200 if verdict.ready else 503), orjson.dumps(verdict.as_json()), _JSON
        if path == "/status":
            if self._snapshot is not None:
                return 200, orjson.dumps(self._snapshot()), _JSON
            return 200, orjson.dumps((await self._readiness.evaluate()).as_json()), _JSON
        if path == "/metrics" and self._metrics is not None:
            body, content_type = self._metrics()
            return 200, body, content_type
        return 404, orjson.dumps({"error": "not found"}), _JSON

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)
            # Drain the headers; the body of a GET is ignored.
            while (await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)) not in (
                    b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode(errors="replace").split()
            method = parts[0] if parts else ""
            path = parts[1].split("?")[0] if len(parts) > 1 else ""
            status, body, content_type = await self.answer(method, path)
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                    f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
                    "cache-control: no-store\r\nconnection: close\r\n\r\n").encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}
