"""How provider adapters reach their upstreams: httpx's pooled transports, one per route.

A route is what changes how the bytes travel: the proxy in between (if any), the TLS
trust and client certificate, and whether HTTP/2 is offered. Deployments on the same
route share one transport and so one connection pool; a deployment with a private CA or
its own proxy gets a pool of its own. httpx (over httpcore) gives us what a gateway in an
enterprise network needs and we would not want to write: HTTP(S) proxies (CONNECT
tunnels for HTTPS upstreams), HTTP/2 negotiated by ALPN, streaming response bodies and
TLS verification. Adapters send through the transport, not an `httpx.AsyncClient`: a
client's cookie jar would carry one provider's cookies into every tenant's calls, and its
redirect/auth/hook machinery costs CPU per call for nothing we use.

The proxy environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) is read once
by the composition root into a `ProxyEnvironment`; nothing here reads the environment.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from broker.config import DeploymentConfig
from broker.errors import ConfigError
from workers.providers.aiohttp_transport import AiohttpTransport
from workers.providers.trace_context import TraceContextTransport

DIRECT = "direct"
"""A deployment's `proxy` value that bypasses any proxy of the environment."""
# Idle pooled connections are closed after this; providers drop theirs after ~60-90 s, and
# reusing a connection the server is closing costs a failed call.
_KEEPALIVE_EXPIRY_S = 30.0


@dataclass(frozen=True, slots=True)
class ProxyEnvironment:
    """The proxies the process was started with, as curl and httpx read them."""

    https: str | None = None
    http: str | None = None
    no_proxy: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxyEnvironment:
        """Read `https_proxy`, `http_proxy`, `all_proxy`, `no_proxy` (lower case first)."""

        def read(name: str) -> str | None:
            return environ.get(name) or environ.get(name.upper()) or None

        fallback = read("all_proxy")
        return cls(
            https=read("https_proxy") or fallback,
            http=read("http_proxy") or fallback,
            no_proxy=read("no_proxy") or "",
        )

    def proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy a call to `url` goes through, or None when it goes direct."""
        proxy = self.https if url.scheme == "https" else self.http
        if proxy is None:
            return None
        host = url.host if url.port is None else f"{url.host}:{url.port}"
        # The standard library's NO_PROXY rules: `*`, host names and domain suffixes
        # (`.corp.example` or `corp.example`), optionally with a port.
        # (Public in CPython for decades, missing from typeshed.)
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if self.no_proxy and bypass(host, {"no": self.no_proxy}):
            return None
        return proxy


@dataclass(frozen=True, slots=True)
class _Route:
    proxy: str | None
    ca_bundle: Path | None
    client_cert: Path | None
    client_key: Path | None
    verify_tls: bool
    http2: bool


class ProviderTransports:
    """The HTTP transports of one worker's provider calls, one per distinct route.

    Args:
        max_connections: Connections per route, at most (the worker's concurrency: no
            call should wait for a connection while a slot is free).
        proxies: The proxy environment, read at the edge.
    """

    def __init__(self, *, max_connections: int, proxies: ProxyEnvironment) -> None:
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=_KEEPALIVE_EXPIRY_S,
        )
        self._max_connections = max_connections
        self._proxies = proxies
        self._transports: dict[_Route, httpx.AsyncBaseTransport] = {}

    def for_deployment(self, name: str, config: DeploymentConfig) -> httpx.AsyncBaseTransport:
        """The transport `name`'s calls go through (built on first use, then shared).

        Raises:
            ConfigError: Its CA bundle or client certificate cannot be read.
        """
        route = self._route(config)
        transport = self._transports.get(route)
        if transport is None:
            # Every call carries the current span's `traceparent` (trace_context.py).
            transport = TraceContextTransport(self._build(name, route))
            self._transports[route] = transport
        return transport

    def _build(self, name: str, route: _Route) -> httpx.AsyncBaseTransport:
        tls = _tls_context(name, route)
        if route.http2:
            # httpcore negotiates HTTP/2 by ALPN and multiplexes calls on one connection
            # per origin, so its per-call scan of the pool stays short.
            return httpx.AsyncHTTPTransport(
                verify=tls,
                http2=True,
                proxy=httpx.Proxy(route.proxy) if route.proxy else None,
                limits=self._limits,
                trust_env=False,  # the environment was read at the edge
            )
        return AiohttpTransport(
            ssl_context=tls,
            proxy=route.proxy,
            max_connections=self._max_connections,
            keepalive_expiry_s=_KEEPALIVE_EXPIRY_S,
        )

    def _route(self, config: DeploymentConfig) -> _Route:
        url = httpx.URL(config.endpoint() or "http://unused.invalid")
        if config.proxy == DIRECT:
            proxy = None
        elif config.proxy is not None:
            proxy = config.proxy
        else:
            proxy = self._proxies.proxy_for(url)
        return _Route(
            proxy=proxy,
            ca_bundle=config.ca_bundle,
            client_cert=config.client_cert,
            client_key=config.client_key,
            verify_tls=config.verify_tls,
            # ALPN only happens on TLS; plain-HTTP upstreams (vLLM, Ollama) speak HTTP/1.1.
            http2=config.http2 and url.scheme == "https",
        )

    @property
    def routes(self) -> int:
        """How many distinct transports (connection pools) have been built."""
        return len(self._transports)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        for transport in self._transports.values():
            await transport.aclose()
        self._transports.clear()

    async def __aenter__(self) -> ProviderTransports:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _tls_context(name: str, route: _Route) -> ssl.SSLContext:
    """A fresh context per route: httpcore sets its ALPN protocols on it."""
    try:
        if route.ca_bundle is not None:
            context = ssl.create_default_context(cafile=str(route.ca_bundle))
        else:
            context = httpx.create_ssl_context(trust_env=False)
        if route.client_cert is not None:
            context.load_cert_chain(
                str(route.client_cert),
                str(route.client_key) if route.client_key is not None else None,
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"deployments.{name}: cannot load its TLS files "
            f"(ca_bundle={route.ca_bundle}, client_cert={route.client_cert}): {exc}"
        ) from exc
    if not route.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
