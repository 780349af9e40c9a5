"""SSRF policy for webhook URLs: only http(s), only global addresses, resolved once.

A webhook URL comes from a client, so without care it is a way to make our servers call
their own network: loopback, private ranges, link-local (cloud metadata at
169.254.169.254), carrier-grade NAT (100.64/10) and their IPv6 equivalents. We resolve the
host once, refuse it if any of its addresses is not global, and the caller then connects to
that pinned address: a DNS answer that changes between check and connect (rebinding) cannot
move the request elsewhere.

An allowlist (`SLUICE_WEBHOOK_ALLOW_HOSTS`) admits named hosts or networks anyway, for
tests and `sluice dev` whose receivers listen on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from broker.errors import WebhookUrlRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> every address the name resolves to (one DNS lookup).
Resolver = Callable[[str, int], Awaitable[list[str]]]

# These carry an IPv4 address in their last 32 bits; judge that address: NAT64, the
# deprecated IPv4-compatible form (::a.b.c.d) and SIIT's IPv4-translated form
# (::ffff:0:a.b.c.d), which some stacks still route to the embedded IPv4 host.
_EMBEDS_IPV4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"),
                ipaddress.ip_network("::/96"), ipaddress.ip_network("::ffff:0:0:0/96"))
_SCHEMES = {"http": 80, "https": 443}


def is_public(address: IPAddress) -> bool:
    """Whether `address` is globally routable and not a special-purpose address.

    `is_global` alone is not enough: it calls multicast global, and IPv6 forms that embed an
    IPv4 address (mapped, NAT64, 6to4, Teredo) must be judged by the embedded address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and any(address in net for net in _EMBEDS_IPV4):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
        if embedded is not None:
            return is_public(embedded)
        if address.is_site_local:  # fec0::/10: deprecated, but still a private range
            return False
    return address.is_global and not address.is_multicast


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which non-global destinations are admitted anyway (none by default)."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> AddressPolicy:
        """From `localhost,127.0.0.1,10.0.0.0/8`: host names and IP networks, comma-separated."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(_normal_host(item))
        return cls(frozenset(hosts), tuple(networks))

    def admits(self, host: str, address: IPAddress) -> bool:
        """Whether we may connect to `address`, reached through the name `host`."""
        if is_public(address):
            return True
        return _normal_host(host) in self.allow_hosts or any(
            address in network for network in self.allow_networks
        )


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A parsed webhook URL: where to connect and what to say in `Host` and SNI."""

    url: str
    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent on the request line

    def pinned_url(self, address: IPAddress) -> str:
        """The same URL with the host replaced by `address` (the connection goes there)."""
        shown = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{shown}:{self.port}{self.target}"

    @property
    def host_header(self) -> str:
        """`Host` as the receiver expects it (the port only when it is not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if _SCHEMES[self.scheme] == self.port else f"{host}:{self.port}"


def parse_webhook_url(url: str) -> WebhookTarget:
    """Parse and check the form of a webhook URL (no DNS).

    Raises:
        WebhookUrlRefused: not an absolute http(s) URL with a host, or it carries credentials.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"Webhook URL {url!r} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise WebhookUrlRefused(f"Webhook URL {url!r} must use http or https.")
    if not parts.hostname:
        raise WebhookUrlRefused(f"Webhook URL {url!r} has no host.")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefused("Webhook URL must not carry credentials; we sign deliveries.")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookTarget(url.strip(), scheme, _normal_host(parts.hostname),
                         port or _SCHEMES[scheme], target)


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, through the system resolver (off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


async def resolve_pinned(
    target: WebhookTarget, policy: AddressPolicy, resolver: Resolver = system_resolver
) -> IPAddress:
    """Resolve `target`'s host once and return the address to connect to.

    Every address the name resolves to must be admitted: a name that mixes public and
    private answers is refused rather than tried address by address.

    Raises:
        WebhookUrlRefused: some address is not global (and not allowlisted).
        OSError: the name does not resolve now (may heal: the caller decides).
    """
    try:
        addresses = [ipaddress.ip_address(target.host)]
    except ValueError:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await resolver(
            target.host, target.port)]
    if not addresses:
        raise OSError(f"{target.host} has no addresses")
    for address in addresses:
        if not policy.admits(target.host, address):
            raise WebhookUrlRefused(
                f"Webhook URL {target.url!r} resolves to {address}, which is not a public "
                "address; set SLUICE_WEBHOOK_ALLOW_HOSTS to admit it (development only)."
            )
    return addresses[0]


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()
