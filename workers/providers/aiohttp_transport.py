"""An httpx transport that moves the bytes with aiohttp: HTTP/1.1 keep-alive, proxies, TLS.

Adapters speak httpx (requests, responses, errors) so they can be tested with
`httpx.MockTransport` and run over any transport. For HTTP/1.1 this one sends through
aiohttp's connection pool: measured with the OpenAI adapter against the simulator, 32
calls at a time, httpcore's pool spent 2.0 ms of CPU per call scanning its connections
(its cost grows with the pool: 128 connections here), aiohttp ~0.2 ms (see
docs/BENCHMARKS.md). aiohttp also brings what production needs: proxies with CONNECT
tunnels, certificate verification with a per-route SSL context, and streamed bodies.
HTTP/2, which aiohttp's client lacks, goes through httpx's own transport instead
(workers/providers/http.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NoReturn

import aiohttp
import httpx

STREAM_RESPONSE = "sluice.stream_response"
"""Set this request extension to True to read the response body as it arrives."""
# Hop-by-hop and framing headers aiohttp writes itself from the body it is given.
_SKIPPED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class _ResponseBody(httpx.AsyncByteStream):
    """A response body read from aiohttp as it arrives; closing returns the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            _raise_as_httpx(exc)

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests through one aiohttp connection pool.

    Args:
        ssl_context: Trust and client certificate for HTTPS upstreams.
        proxy: An `http://` or `https://` proxy every call goes through, or None.
        max_connections: Open connections at most (calls beyond wait for one).
        keepalive_expiry_s: Idle connections are closed after this long.
    """

    def __init__(
        self,
        *,
        ssl_context: object,
        proxy: str | None,
        max_connections: int,
        keepalive_expiry_s: float,
    ) -> None:
        self._ssl_context = ssl_context
        self._proxy = proxy
        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the loop that runs it.
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry_s,
            ssl=self._ssl_context,  # type: ignore[arg-type]
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # No cookie jar: one provider's cookies must not ride along on every tenant's call.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Bodies reach httpx as sent; it decodes them from their Content-Encoding.
            auto_decompress=False,
            trust_env=False,  # the proxy environment was read at the edge
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        phases = request.extensions.get("timeout", {})
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.decode("latin-1").lower() not in _SKIPPED_HEADERS
        ]
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                proxy=self._proxy,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=phases.get("pool"),
                    sock_connect=phases.get("connect"),
                    sock_read=phases.get("read"),
                ),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            _raise_as_httpx(exc, request)
        extensions = {"http_version": b"HTTP/1.1",
                      "reason_phrase": (response.reason or "").encode("latin-1")}
        answer_headers: list[tuple[bytes, bytes]] = list(response.raw_headers)
        if request.extensions.get(STREAM_RESPONSE):
            return httpx.Response(response.status, headers=answer_headers,
                                  stream=_ResponseBody(response), request=request,
                                  extensions=extensions)
        # Read here whole: handing httpx the bytes skips its chunk iteration, which cost a
        # quarter of this transport's CPU per call.
        try:
            content = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            _raise_as_httpx(exc, request)
        finally:
            response.release()
        return httpx.Response(response.status, headers=answer_headers, content=content,
                              request=request, extensions=extensions)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _raise_as_httpx(exc: BaseException, request: httpx.Request | None = None) -> NoReturn:
    """Raise the httpx exception adapters expect for an aiohttp failure."""
    message = f"{type(exc).__name__}: {exc}"
    error: httpx.TransportError
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        error = httpx.ProxyError(message)
    elif isinstance(exc, aiohttp.ConnectionTimeoutError):
        error = httpx.ConnectTimeout(message)
    elif isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        error = httpx.ReadTimeout(message)
    elif isinstance(exc, aiohttp.ClientConnectorError):
        error = httpx.ConnectError(message)
    else:  # the connection broke or the answer was not valid HTTP
        error = httpx.ReadError(message)
    if request is not None:
        error.request = request
    raise error from exc
