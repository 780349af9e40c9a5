"""An httpx transport for the worker's provider calls: HTTP/1.1 keep-alive, nothing else.

The worker makes one small POST per inference to a handful of upstreams, thousands of
times a second, on the cores it shares with everything else. A general-purpose client
spends most of such a call in its own machinery. Measured with the OpenAI adapter against
the simulator, 32 calls at a time, CPU per call, adapter included: httpx over aiohttp
371-464 µs, httpx over pyreqwest (Rust) 390-411 µs, this transport 219-229 µs (see
docs/BENCHMARKS.md). It is an asyncio protocol with httptools' C parser (uvicorn's,
already a dependency) and a stack of idle connections per origin.

What it does: HTTP and HTTPS (certificate and host name verified), any request body
already in memory, responses framed by Content-Length, chunked encoding or close, the
connect, read and pool timeouts of the request's `timeout` extension, and errors as
httpx's exception classes, so adapters cannot tell it from httpx's own transports.
What it does not: proxies, HTTP/2, HEAD, streaming response bodies (the body is read
whole before `handle_async_request` returns, and the read timeout bounds the wait for all
of it). Requests are written to the socket's buffer at once, so a peer that stops reading
shows as a read timeout, not a write timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast

import httptools
import httpx

_DEFAULT_TIMEOUT_S = 60.0
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class _Exchange:
    """One response being received: its parts as httptools reports them."""

    __slots__ = ("body", "complete", "framed", "headers", "keep_alive", "received_any",
                 "status")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete: asyncio.Future[None] = loop.create_future()
        self.keep_alive = False
        self.received_any = False
        self.framed = False  # a Content-Length or chunked body, not one ended by the close


class _Connection(asyncio.Protocol):
    """A keep-alive connection to one origin; at most one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser: Any = None
        self._exchange: _Exchange | None = None
        self.closed = False

    # asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:  # bytes nobody asked for: the connection's framing is lost
            self.close()
            return
        exchange.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self._exchange
        if exchange is None or exchange.complete.done():
            return
        if exchange.status and not exchange.framed:  # a body delimited by the close ends here
            exchange.complete.set_result(None)
            return
        self._fail(httpx.RemoteProtocolError(
            "server disconnected without sending a complete response"))

    # httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._exchange is not None
        self._exchange.headers.append((name, value))
        if name.lower() in _FRAMING_HEADERS:
            self._exchange.framed = True

    def on_headers_complete(self) -> None:
        assert self._exchange is not None
        self._exchange.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self._exchange is not None
        self._exchange.body.append(body)

    def on_message_complete(self) -> None:
        exchange = self._exchange
        assert exchange is not None
        exchange.keep_alive = self._parser.should_keep_alive()
        if not exchange.complete.done():
            exchange.complete.set_result(None)

    # used by the transport -------------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> _Exchange:
        """Write one request; its response arrives in the returned exchange."""
        assert self._transport is not None
        self._exchange = exchange = _Exchange(self._loop)
        self._parser = httptools.HttpResponseParser(self)
        self._transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self._transport.write(body)
        return exchange

    def finish(self, exchange: _Exchange) -> bool:
        """End `exchange`; whether the connection can carry another one."""
        self._exchange = None
        reusable = exchange.keep_alive and not self.closed
        if not reusable:
            self.close()
        return reusable

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: Exception) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.complete.done():
            exchange.complete.set_exception(error)
        self.close()


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Sends each request over an idle connection to its origin, or a new one.

    Args:
        max_connections: Requests in flight at once, across origins; more wait for a
            slot (the `pool` timeout bounds the wait).
        max_idle_per_origin: Idle connections kept per origin after their exchange.
        ssl_context: For https origins; default: httpx's own (certifi's CA bundle, or
            SSL_CERT_FILE / SSL_CERT_DIR), verifying certificates and host names.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        max_idle_per_origin: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle_per_origin
        self._ssl_context = ssl_context
        self._idle: dict[tuple[bytes, bytes, int], deque[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":  # its response's length would describe no body
            raise httpx.UnsupportedProtocol("KeepAliveTransport does not send HEAD requests",
                                            request=request)
        timeouts = request.extensions.get("timeout", {})
        head, body = self._encode(request, await request.aread())
        if self._slots.locked():  # a timer only when the call must wait for a slot
            try:
                async with asyncio.timeout(_timeout(timeouts, "pool")):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise httpx.PoolTimeout("no connection slot free in time",
                                        request=request) from exc
        else:
            await self._slots.acquire()
        try:
            return await self._exchange(request, head, body, timeouts)
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def _exchange(
        self, request: httpx.Request, head: bytes, body: bytes, timeouts: dict[str, Any]
    ) -> httpx.Response:
        origin = request.url.raw_scheme, request.url.raw_host, request.url.port or (
            443 if request.url.raw_scheme == b"https" else 80)
        while True:
            connection = self._take_idle(origin)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(request, origin, timeouts)
            exchange = connection.send(head, body)
            try:
                async with asyncio.timeout(_timeout(timeouts, "read")):
                    await exchange.complete
            except TimeoutError as exc:
                connection.close()
                raise httpx.ReadTimeout("timed out reading the response", request=request) from exc
            except httpx.RemoteProtocolError:
                connection.close()
                # A server may close an idle keep-alive connection just as we send on it;
                # then nothing of this request was processed, and a new connection may try.
                if reused and not exchange.received_any:
                    continue
                raise
            except BaseException:  # cancelled mid-response: the framing is lost with it
                connection.close()
                raise
            if connection.finish(exchange):
                self._keep_idle(origin, connection)
            return httpx.Response(
                exchange.status,
                headers=exchange.headers,
                content=b"".join(exchange.body),
                request=request,
                extensions={"http_version": b"HTTP/1.1"},
            )

    def _take_idle(self, origin: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recent: least likely closed by the server
            if not connection.closed:
                return connection
        return None

    def _keep_idle(self, origin: tuple[bytes, bytes, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, deque())
        if len(idle) >= self._max_idle:
            connection.close()
        else:
            idle.append(connection)

    async def _connect(
        self, request: httpx.Request, origin: tuple[bytes, bytes, int], timeouts: dict[str, Any]
    ) -> _Connection:
        scheme, host, port = origin
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(
                f"unsupported URL scheme {scheme.decode()!r}", request=request)
        tls = None
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()
            tls = self._ssl_context
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_timeout(timeouts, "connect")):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), host.decode("ascii"), port, ssl=tls)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return connection

    @staticmethod
    def _encode(request: httpx.Request, body: bytes) -> tuple[bytes, bytes]:
        # The body is sent whole, so its framing is a Content-Length even when httpx
        # prepared a streamed body as chunked.
        lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw
                     if name.lower() not in _FRAMING_HEADERS)
        if body or request.method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        return b"".join(lines), body


def _timeout(timeouts: dict[str, Any], phase: str) -> float | None:
    """The request's timeout for `phase` (None: no limit), as httpx's Timeout.as_dict gives."""
    value = timeouts.get(phase, _DEFAULT_TIMEOUT_S)
    return None if value is None else float(value)
