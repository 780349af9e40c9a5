"""A webhook receiver for tests: aiohttp on 127.0.0.1, answering from a per-path script."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from broker.embedded import free_port


@dataclass(frozen=True)
class Hit:
    """One request the receiver got, and what it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """Answers each path with its scripted statuses in turn (the last one repeats)."""

    port: int
    script: dict[str, list[int]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)

    def url(self, path: str) -> str:
        """The receiver's URL for `path`."""
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Hit]:
        """Hits on `path`, in order."""
        return [hit for hit in self.hits if hit.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        statuses = self.script.setdefault(request.path, [200])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        self.hits.append(Hit(request.path, dict(request.headers), body, status))
        headers = {}
        if 300 <= status < 400:
            headers["Location"] = self.url("/redirected")
        if status in (429, 503):
            headers["Retry-After"] = "0"
        return web.Response(status=status, headers=headers, text="scripted")


@asynccontextmanager
async def receiver(script: dict[str, list[int]] | None = None) -> AsyncIterator[Receiver]:
    """Serve a `Receiver` until the block ends."""
    target = Receiver(free_port(), dict(script or {}))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", target.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", target.port).start()
    try:
        yield target
    finally:
        await runner.cleanup()
