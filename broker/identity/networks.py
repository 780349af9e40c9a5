"""IP networks as every address list reads them (IP allow/deny lists, trusted proxies).

An IPv4 client on a dual-stack socket arrives as `::ffff:1.2.3.4` and is matched as
`1.2.3.4` (`broker.stores.access_lists.peer_ip`); a list entry written the same way must
become the IPv4 network too, or it would never match anyone.
"""

from __future__ import annotations

import ipaddress

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_MAPPED_PREFIX = 96  # ::ffff:0:0/96 holds every IPv4-mapped address


def parse_network(cidr: str) -> IpNetwork:
    """`cidr` (an address or a CIDR; host bits are dropped) as a network, an IPv4-mapped
    IPv6 network (`::ffff:203.0.113.0/120`) as its IPv4 form (`203.0.113.0/24`).

    Raises:
        ValueError: `cidr` is neither an address nor a CIDR.
    """
    network = ipaddress.ip_network(cidr.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and \
            network.prefixlen >= _IPV4_MAPPED_PREFIX:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - _IPV4_MAPPED_PREFIX))
    return network
