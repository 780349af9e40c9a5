"""A minimal HTTP/1.1 keep-alive load generator for `sluice bench`.

The benchmark shares two cores with the stack it measures, so the client must cost as
little as possible: one raw asyncio connection per concurrent caller, pre-built request
heads, no general-purpose HTTP client machinery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

BodyFactory = Callable[[int], bytes]


@dataclass
class LoadResult:
    """Latencies (seconds) of completed requests, and failures by status."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> int:
        """How many requests got 200."""
        return self.statuses.get(200, 0)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (which must not be empty)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    url: str,
    api_key: str,
    make_body: BodyFactory,
    *,
    total: int,
    concurrency: int,
    on_progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """POST `total` bodies to `url` from `concurrency` keep-alive connections."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
    ).encode()
    result = LoadResult()
    counter = iter(range(total))

    async def caller() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index in counter:
                body = make_body(index)
                started = time.perf_counter()
                writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if on_progress is not None:
                    on_progress(1)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(min(concurrency, total))))
    result.elapsed_s = time.perf_counter() - started
    return result
