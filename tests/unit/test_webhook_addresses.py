"""SSRF address policy: classification, URL form, pinned resolution, allowlist."""

from __future__ import annotations

import ipaddress

import pytest

from broker.errors import WebhookUrlRefused
from broker.webhooks.addresses import (
    AddressPolicy,
    is_public,
    parse_webhook_url,
    resolve_pinned,
)

REFUSED = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.0.170", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo carrying 127.0.0.1
    "::a9fe:a9fe", "::ffff:0:a9fe:a9fe",  # IPv4-compatible and -translated metadata address
    "fec0::1",  # site-local
]
ADMITTED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
            "::808:808", "::ffff:0:808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_global_addresses_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ADMITTED)
def test_global_addresses_are_admitted(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", [
    "ftp://example.com/x", "file:///etc/passwd", "gopher://x", "http://", "example.com/hook",
    "http://user:pw@example.com/", "http://example.com:99999/",
])
def test_only_plain_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(WebhookUrlRefused):
        parse_webhook_url(url)


def test_url_parts_and_pinned_form() -> None:
    target = parse_webhook_url("HTTPS://Hooks.Example.com./in?x=1")
    assert (target.scheme, target.host, target.port, target.target) == (
        "https", "hooks.example.com", 443, "/in?x=1")
    assert target.host_header == "hooks.example.com"
    assert target.pinned_url(ipaddress.ip_address("2606:4700::1")) == (
        "https://[2606:4700::1]:443/in?x=1")
    assert parse_webhook_url("http://h:8080").host_header == "h:8080"


async def _answers(*addresses: str) -> list[str]:
    return list(addresses)


async def test_resolution_is_pinned_to_one_checked_address() -> None:
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["93.184.216.34", "93.184.216.35"]

    target = parse_webhook_url("https://hooks.example.com/x")
    assert str(await resolve_pinned(target, AddressPolicy(), resolver)) == "93.184.216.34"
    assert calls == ["hooks.example.com"]


async def test_a_name_with_any_private_answer_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "169.254.169.254"]

    with pytest.raises(WebhookUrlRefused, match=r"169\.254\.169\.254"):
        await resolve_pinned(parse_webhook_url("http://evil.example/"), AddressPolicy(), resolver)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/x", "http://169.254.169.254/latest",
                                 "http://[::1]/x", "http://localhost/x"])
async def test_loopback_and_metadata_need_the_allowlist(url: str) -> None:
    target = parse_webhook_url(url)
    with pytest.raises(WebhookUrlRefused):
        await resolve_pinned(target, AddressPolicy())
    policy = AddressPolicy.parse("localhost, 127.0.0.0/8, ::1, 169.254.169.254")
    assert await resolve_pinned(target, policy)


def test_allowlist_by_name_does_not_admit_other_names() -> None:
    policy = AddressPolicy.parse("receiver.test")
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.admits("Receiver.Test.", loopback)
    assert not policy.admits("other.test", loopback)
