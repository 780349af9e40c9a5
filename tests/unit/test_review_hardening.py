"""Hardening found in review: inputs a producer or caller controls never crash or bypass."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from broker.stores.access_lists import Access, checked_cidrs
from schemas import ChatCompletionRequest, InferenceRequest
from schemas.caching import CacheTicket
from workers.ledger.rows import request_row


def test_an_ipv4_client_on_a_dual_stack_socket_meets_the_ipv4_rules() -> None:
    denied = Access(deny=("1.2.3.0/24",))
    assert not denied.admits("::ffff:1.2.3.4") and not denied.admits("1.2.3.4")
    allowed = Access(allow_lists=(("10.0.0.0/8",),))
    assert allowed.admits("::ffff:10.1.2.3") and not allowed.admits("::ffff:11.1.2.3")


def test_an_ipv4_mapped_list_entry_is_stored_and_matched_as_ipv4() -> None:
    assert checked_cidrs(["::ffff:203.0.113.7", "::ffff:10.0.0.0/104", "2001:db8::/32"],
                         "ip_deny") == ["203.0.113.7/32", "10.0.0.0/8", "2001:db8::/32"]
    # Entries stored before they were normalised match too.
    denied = Access(deny=("::ffff:203.0.113.7/128",))
    assert not denied.admits("203.0.113.7") and not denied.admits("::ffff:203.0.113.7")
    assert denied.admits("203.0.113.8")
    allowed = Access(allow_lists=(("::ffff:10.0.0.0/104",),))
    assert allowed.admits("10.1.2.3") and not allowed.admits("11.1.2.3")


@pytest.mark.parametrize("version", ["²", "٣", "9" * 30, "-1", "v2"])
def test_a_template_version_that_is_not_a_small_ascii_number_is_left_out(
    version: str,
) -> None:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    request = InferenceRequest(id="r1", model="m", body=body, created_at=datetime.now(UTC),
                               metadata={"template": "t", "template_version": version})
    assert request_row(request)["template_version"] is None


@pytest.mark.parametrize("ttl_s", [1e12, float("inf"), float("nan")])
def test_a_cache_ticket_lives_a_year_at_most(ttl_s: float) -> None:
    with pytest.raises(ValidationError):
        CacheTicket(key="a" * 64, ttl_s=ttl_s)


def test_a_shared_secret_in_a_jwks_never_verifies_tokens() -> None:
    from ingress.identity import _parse_jwks

    keys = _parse_jwks({"keys": [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
        {"kty": "EC", "kid": "ec", "crv": "P-256",
         "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})
    assert set(keys) == {"ec"}
