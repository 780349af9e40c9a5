"""The role matrix and IP lists (ingress/auth.py): which route needs what, who has it,
and which addresses pass a key's and its tenant's lists."""

from __future__ import annotations

import re

import pytest
from starlette.requests import Request

from broker.errors import AccessNotApproved, InvalidRequest
from broker.identity.config import Role
from broker.stores.access_lists import Access, key_access_of
from ingress.auth import authorize, client_address, permission_for, with_role
from ingress.services import Principal

MEMBER = Principal(tenant="acme", api_key_id="key_1")


@pytest.mark.parametrize(("method", "path", "permission"), [
    ("POST", "/v1/chat/completions", "use_models"),
    ("POST", "/v1/messages", "use_models"),
    ("POST", "/v1/requests/req_1/cancel", "use_models"),
    ("GET", "/v1/requests/req_1", "read_usage"),
    ("GET", "/v1/usage", "read_usage"),
    ("GET", "/v1/feedback", "read_usage"),
    ("POST", "/v1/requests/req_1/feedback", "use_models"),
    ("GET", "/console/api/keys", "manage_keys"),
    ("GET", "/console/api/throughput", "read_usage"),
    ("POST", "/console/api/dead-letters/replay", "administer"),
    ("POST", "/v1/batches", "manage_batches"),
    ("GET", "/v1/files/file_1/content", "manage_batches"),
    ("POST", "/v1/webhooks/endpoints", "manage_webhooks"),
    ("GET", "/v1/webhooks/secrets", "manage_webhooks"),
    ("POST", "/v1/admin/keys", "manage_keys"),
    ("PUT", "/v1/admin/tenants/acme", "administer"),
    ("POST", "/v1/some/future/route", "use_models"),  # closed to analysts by default
])
def test_each_route_needs_one_permission(method: str, path: str, permission: str) -> None:
    assert permission_for(method, path) == permission


@pytest.mark.parametrize(("role", "allowed", "refused"), [
    ("admin", ["administer", "manage_keys", "use_models"], []),
    ("tenant_admin", ["manage_keys", "manage_webhooks", "use_models"], ["administer"]),
    ("member", ["use_models", "manage_batches", "read_usage", "manage_webhooks"],
     ["manage_keys", "administer"]),
    ("analyst", ["read_usage"], ["use_models", "manage_batches", "manage_keys",
                                 "manage_webhooks"]),
])
def test_roles_grant_the_matrix(role: Role, allowed: list[str], refused: list[str]) -> None:
    principal = with_role(MEMBER, role)
    for permission in allowed:
        authorize(principal, permission)  # type: ignore[arg-type]
    for permission in refused:
        with pytest.raises(AccessNotApproved) as caught:
            authorize(principal, permission)  # type: ignore[arg-type]
        assert caught.value.code == "insufficient_role"


def test_the_refusal_names_the_role_needed() -> None:
    with pytest.raises(AccessNotApproved, match=r"'analyst' may not.*needs the role "
                       r"'member' or 'tenant_admin' or 'admin'"):
        authorize(with_role(MEMBER, "analyst"), "use_models")
    authorize(MEMBER, "use_models")  # a key without a stored role is a member


def test_ip_lists() -> None:
    assert Access().admits("203.0.113.9")
    tenant_and_key = Access(allow_lists=(("10.0.0.0/8",), ("10.1.0.0/16", "::1/128")),
                            deny=("10.1.2.0/24",))
    assert tenant_and_key.admits("10.1.3.4")
    assert not tenant_and_key.admits("10.2.0.1")  # the tenant's list admits, not the key's
    assert not tenant_and_key.admits("10.1.2.3")  # denied
    assert not tenant_and_key.admits("testclient")  # no address: refused when lists exist


def test_new_key_access_is_checked_first() -> None:
    access = key_access_of("analyst", ["192.168.1.7"], None, scope="acme")
    assert access.allow_lists == (("192.168.1.7/32",),)
    with pytest.raises(AccessNotApproved, match="Only the admin"):
        key_access_of("admin", None, None, scope="acme")
    assert key_access_of("admin", None, None, scope=None).role == "admin"
    with pytest.raises(InvalidRequest):
        key_access_of("owner", None, None, scope=None)
    with pytest.raises(InvalidRequest):
        key_access_of("member", ["10.0.0.300/8"], None, scope=None)


class _State:
    ingress = None


class _App:
    state = _State()


def _request(peer: str, forwarded: str | list[str] | None) -> Request:
    lines = [forwarded] if isinstance(forwarded, str) else forwarded or []
    headers = [(b"x-forwarded-for", line.encode()) for line in lines]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "client": (peer, 5000), "app": _App()})


def test_x_forwarded_for_is_ignored_unless_the_peer_is_trusted() -> None:
    assert client_address(_request("198.51.100.1", "10.0.0.1")) == "198.51.100.1"


def test_a_trusted_proxy_forwards_the_nearest_untrusted_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from broker.identity.config import IdentityConfig

    identity = IdentityConfig(trusted_proxies=["10.0.0.0/8"])
    monkeypatch.setattr(_State, "ingress", SimpleNamespace(
        services=SimpleNamespace(config=SimpleNamespace(identity=identity))))
    # The client may write anything leftmost; the proxy appended what it saw.
    request = _request("10.0.0.2", "1.1.1.1, 203.0.113.9, 10.0.0.7")
    assert client_address(request) == "203.0.113.9"
    assert client_address(_request("198.51.100.1", "10.0.0.1")) == "198.51.100.1"



def test_every_x_forwarded_for_line_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from broker.identity.config import IdentityConfig

    identity = IdentityConfig(trusted_proxies=["10.0.0.0/8"])
    monkeypatch.setattr(_State, "ingress", SimpleNamespace(
        services=SimpleNamespace(config=SimpleNamespace(identity=identity))))
    # The client forged the first line; its proxy added what it saw as a line of its own.
    request = _request("10.0.0.2", ["192.0.2.10", "198.51.100.5"])
    assert client_address(request) == "198.51.100.5"


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "bogus", "::1/129"])
def test_a_trusted_proxy_that_is_not_a_cidr_fails_at_start_up(entry: str) -> None:
    from broker.config import parse_config
    from broker.errors import ConfigError
    from broker.identity.config import IdentityConfig

    with pytest.raises(ConfigError, match=re.escape(repr(entry))):
        parse_config({"models": {}, "identity": {"trusted_proxies": ["10.0.0.0/8", entry]}})
    assert IdentityConfig(trusted_proxies=["10.0.0.7/8", "::ffff:10.0.0.0/104"]) \
        .trusted_proxies == ["10.0.0.0/8", "10.0.0.0/8"]
