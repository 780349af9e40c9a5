"""JWT bearer tokens: signature, expiry, audience, issuer, JWKS caching and key rotation,
claims mapped to tenant and role within what the issuer is trusted for, and an issuer that
cannot be reached (keys generated here; the JWKS is served by a MockTransport that counts
fetches)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from broker.errors import AuthenticationFailed, IssuerUnavailable
from broker.identity.config import IdentityConfig, IssuerConfig
from ingress.envelope import error_response
from ingress.identity import JwksCache, JwtVerifier, looks_like_jwt

ISSUER = "https://id.example.test/"
JWKS_URL = "https://id.example.test/jwks"
AUDIENCE = "sluicegate"


class Issuer:
    """A test identity provider: signing keys, a JWKS document and a fetch counter."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {"rsa-1": rsa.generate_private_key(65537, 2048)}
        self.fetches = 0
        self.down = False  # answers 503, as an issuer in an outage does

    def jwks(self) -> dict[str, Any]:
        documents = []
        for kid, key in self.keys.items():
            algorithm = jwt.algorithms.RSAAlgorithm if isinstance(
                key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
            public = json.loads(algorithm.to_jwk(key.public_key()))
            documents.append(public | {"kid": kid, "use": "sig"})
        return {"keys": documents}

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            assert str(request.url) == JWKS_URL
            self.fetches += 1
            if self.down:
                return httpx.Response(503, text="upstream unavailable")
            return httpx.Response(200, json=self.jwks())
        return httpx.MockTransport(handle)

    def token(self, kid: str = "rsa-1", key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "tenant": "acme",
                "role": "member", "iat": now, "exp": now + 300} | claims
        signing_key = key or self.keys[kid]
        algorithm = "RS256" if isinstance(signing_key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(body, signing_key, algorithm=algorithm, headers={"kid": kid})


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def verifier(issuer: Issuer, **options: Any) -> JwtVerifier:
    config = IdentityConfig(issuers=[IssuerConfig(
        issuer=ISSUER, jwks_url=JWKS_URL, audience=AUDIENCE, **options)],
        jwks_min_refetch_s=0)
    return JwtVerifier(config, JwksCache(ttl_s=600, min_refetch_s=0,
                                         transport=issuer.transport()))


async def test_a_valid_token_names_its_tenant_and_role(issuer: Issuer) -> None:
    token = issuer.token(tenant="globex", role="tenant_admin")
    assert looks_like_jwt(token) and not looks_like_jwt("sk-sluice-abc")
    principal = await verifier(issuer).principal(token)
    assert (principal.tenant, principal.role, principal.subject) == (
        "globex", "tenant_admin", "user-1")


async def test_roles_map_translates_the_issuers_names(issuer: Issuer) -> None:
    readers = {"roles_map": {"readers": "analyst"}}
    principal = await verifier(issuer, **readers).principal(
        issuer.token(role=["staff", "readers"]))
    assert principal.role == "analyst"
    with pytest.raises(AuthenticationFailed, match="no role"):
        await verifier(issuer, **readers).principal(issuer.token(role="staff"))


async def test_with_a_roles_map_an_unmapped_value_never_reads_as_our_role(
        issuer: Issuer) -> None:
    # The issuer's own "admin" group is not our admin unless the config maps it.
    groups = {"role_claim": "groups",
              "roles_map": {"finance": "analyst", "engineers": "member"}}
    principal = await verifier(issuer, **groups).principal(
        issuer.token(groups=["admin", "engineers"]))
    assert principal.role == "member"
    for unmapped in (["admin"], "tenant_admin"):
        with pytest.raises(AuthenticationFailed, match="no role"):
            await verifier(issuer, **groups).principal(issuer.token(groups=unmapped))


@pytest.mark.parametrize("groups", [["readers", "leads", "staff"], ["staff", "leads",
                                                                    "readers"]])
async def test_the_most_privileged_mapped_role_wins_in_any_order(
        issuer: Issuer, groups: list[str]) -> None:
    mapped = {"role_claim": "groups",
              "roles_map": {"readers": "analyst", "leads": "tenant_admin"}}
    principal = await verifier(issuer, **mapped).principal(issuer.token(groups=groups))
    assert principal.role == "tenant_admin"
    # Without a roles_map our own names count, the most privileged of them too.
    plain = await verifier(issuer).principal(issuer.token(role=["analyst", "tenant_admin"]))
    assert plain.role == "tenant_admin"


async def test_an_issuer_speaks_only_for_its_tenants(issuer: Issuer) -> None:
    limited = verifier(issuer, tenants=["acme", "initech"])
    assert (await limited.principal(issuer.token(tenant="initech"))).tenant == "initech"
    with pytest.raises(AuthenticationFailed,
                       match=r"tenant 'globex'.*issuer " + re.escape(ISSUER)):
        await limited.principal(issuer.token(tenant="globex"))
    anyone = await verifier(issuer).principal(issuer.token(tenant="globex"))
    assert anyone.tenant == "globex"  # no list: any tenant
    with pytest.raises(ValidationError):
        IssuerConfig(issuer=ISSUER, jwks_url=JWKS_URL, audience=AUDIENCE, tenants=[])


async def test_a_role_above_the_issuers_max_role_is_refused(issuer: Issuer) -> None:
    capped = verifier(issuer, max_role="tenant_admin",
                      roles_map={"ops": "admin", "leads": "tenant_admin"})
    with pytest.raises(AuthenticationFailed, match=r"'admin'.*max_role: tenant_admin"):
        await capped.principal(issuer.token(role=["ops", "leads"]))  # refused, not demoted
    assert (await capped.principal(issuer.token(role="leads"))).role == "tenant_admin"
    # By default an issuer may grant admin (README: a token that maps to admin administers).
    assert (await verifier(issuer).principal(issuer.token(role="admin"))).role == "admin"


async def test_es256_tokens_verify(issuer: Issuer) -> None:
    issuer.keys["ec-1"] = ec.generate_private_key(ec.SECP256R1())
    principal = await verifier(issuer).principal(issuer.token(kid="ec-1"))
    assert principal.tenant == "acme"


@pytest.mark.parametrize(("claims", "message"), [
    ({"exp": int(time.time()) - 3600}, "expired"),
    ({"aud": "another-service"}, "another audience"),
    ({"nbf": int(time.time()) + 3600}, "not yet valid"),
    ({"tenant": None}, "'tenant' claim"),
    ({"iss": "https://evil.example.test/"}, "not trusted"),
])
async def test_invalid_claims_are_refused(issuer: Issuer, claims: dict[str, Any],
                                          message: str) -> None:
    with pytest.raises(AuthenticationFailed, match=message):
        await verifier(issuer).principal(issuer.token(**claims))


async def test_a_bad_signature_is_refused(issuer: Issuer) -> None:
    impostor = rsa.generate_private_key(65537, 2048)
    with pytest.raises(AuthenticationFailed, match="Signature verification failed"):
        await verifier(issuer).principal(issuer.token(key=impostor))
    header, _body, signature = issuer.token().split(".")
    tampered = jwt.utils.base64url_encode(json.dumps(
        {"iss": ISSUER, "aud": AUDIENCE, "tenant": "globex", "role": "admin",
         "exp": int(time.time()) + 300}).encode()).decode()
    with pytest.raises(AuthenticationFailed):
        await verifier(issuer).principal(f"{header}.{tampered}.{signature}")


async def test_an_unknown_kid_refetches_the_jwks_once(issuer: Issuer) -> None:
    checker = verifier(issuer)
    await checker.principal(issuer.token())
    assert issuer.fetches == 1
    issuer.keys["rsa-2"] = rsa.generate_private_key(65537, 2048)  # the issuer rotated
    principal = await checker.principal(issuer.token(kid="rsa-2", sub="user-2"))
    assert principal.subject == "user-2" and issuer.fetches == 2
    with pytest.raises(AuthenticationFailed, match="not one of"):
        await checker.principal(issuer.token(kid="made-up", key=issuer.keys["rsa-1"]))
    assert issuer.fetches == 3


async def test_unknown_kids_refetch_at_most_once_per_interval(issuer: Issuer) -> None:
    now = [1000.0]
    jwks = JwksCache(ttl_s=600, min_refetch_s=30, transport=issuer.transport(),
                     clock=lambda: now[0])
    checker = JwtVerifier(IdentityConfig(issuers=[IssuerConfig(
        issuer=ISSUER, jwks_url=JWKS_URL, audience=AUDIENCE)]), jwks)
    await checker.principal(issuer.token())
    for n in range(5):
        with pytest.raises(AuthenticationFailed):
            await checker.principal(issuer.token(kid=f"made-up-{n}", key=issuer.keys["rsa-1"]))
    assert issuer.fetches == 1
    now[0] += 601  # past the TTL: fetched again
    await checker.principal(issuer.token(sub="other"))
    assert issuer.fetches == 2


async def test_a_verified_token_is_cached_until_it_expires(issuer: Issuer) -> None:
    now = [time.time()]
    checker = JwtVerifier(IdentityConfig(issuers=[IssuerConfig(
        issuer=ISSUER, jwks_url=JWKS_URL, audience=AUDIENCE)]),
        JwksCache(ttl_s=600, min_refetch_s=0, transport=issuer.transport()),
        clock=lambda: now[0])
    token = issuer.token(exp=int(now[0]) + 60)
    first = await checker.principal(token)
    issuer.keys.clear()  # a cached token needs no key
    assert await checker.principal(token) is first
    now[0] += 61  # by our clock the token expired: verified again (PyJWT reads real time)
    again = await checker.principal(token)
    assert again == first and again is not first


def _cache_at(issuer: Issuer, now: list[float]) -> tuple[JwtVerifier, JwksCache]:
    jwks = JwksCache(ttl_s=600, min_refetch_s=30, transport=issuer.transport(),
                     clock=lambda: now[0])
    return JwtVerifier(IdentityConfig(issuers=[IssuerConfig(
        issuer=ISSUER, jwks_url=JWKS_URL, audience=AUDIENCE)]), jwks), jwks


async def test_an_unreachable_issuer_is_asked_once_per_interval_and_answers_retry(
        issuer: Issuer) -> None:
    now = [1000.0]
    checker, _ = _cache_at(issuer, now)
    issuer.down = True
    for n in range(5):  # five callers during the outage: one fetch, five fast answers
        with pytest.raises(IssuerUnavailable,
                           match=re.escape(ISSUER) + r".*Retry in 30s") as caught:
            await checker.principal(issuer.token(sub=f"user-{n}"))
        assert caught.value.retriable
    assert issuer.fetches == 1
    now[0] += 30  # the interval passed: asked again, and the issuer is back
    issuer.down = False
    assert (await checker.principal(issuer.token(sub="user-9"))).subject == "user-9"
    assert issuer.fetches == 2


async def test_during_an_outage_unknown_kids_do_not_refetch_and_known_keys_serve(
        issuer: Issuer) -> None:
    now = [1000.0]
    checker, _ = _cache_at(issuer, now)
    await checker.principal(issuer.token())
    issuer.down = True
    now[0] += 601  # past the TTL: one attempt fails, the keys we had keep serving
    assert (await checker.principal(issuer.token(sub="user-2"))).subject == "user-2"
    assert issuer.fetches == 2
    for n in range(5):  # a rotated (or made-up) kid cannot be checked until the issuer is back
        with pytest.raises(IssuerUnavailable, match=re.escape(ISSUER)):
            await checker.principal(issuer.token(kid=f"new-{n}", key=issuer.keys["rsa-1"]))
    assert issuer.fetches == 2
    now[0] += 30
    issuer.down = False
    with pytest.raises(AuthenticationFailed, match="not one of"):  # asked: truly unknown
        await checker.principal(issuer.token(kid="new-9", key=issuer.keys["rsa-1"]))
    assert issuer.fetches == 3


def test_an_unreachable_issuer_is_a_503_with_retry_after() -> None:
    response = error_response(IssuerUnavailable(f"issuer {ISSUER} down; Retry in 30s.",
                                                retry_after_s=29.5))
    assert response.status_code == 503 and response.headers["retry-after"] == "30"
    assert ISSUER in json.loads(bytes(response.body))["error"]["message"]


async def test_tokens_arriving_during_the_first_fetch_wait_for_it(issuer: Issuer) -> None:
    answered = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        issuer.fetches += 1
        await answered.wait()  # the issuer answers once every token is waiting
        return httpx.Response(200, json=issuer.jwks())

    cache = JwksCache(ttl_s=600, min_refetch_s=30, transport=httpx.MockTransport(slow))
    config = IssuerConfig(issuer=ISSUER, jwks_url=JWKS_URL, audience=AUDIENCE)
    waiting = [asyncio.ensure_future(cache.key(config, "rsa-1")) for _ in range(3)]
    await asyncio.sleep(0.05)
    answered.set()
    keys = await asyncio.gather(*waiting)
    assert len(keys) == 3 and issuer.fetches == 1  # one fetch served all three
