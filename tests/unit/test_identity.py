"""JWT bearer tokens: signature, expiry, audience, issuer, JWKS caching and key rotation,
claims mapped to tenant and role (keys generated here; the JWKS is served by a
MockTransport that counts fetches)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.errors import AuthenticationFailed
from broker.identity.config import IdentityConfig, IssuerConfig
from ingress.identity import JwksCache, JwtVerifier, looks_like_jwt

ISSUER = "https://id.example.test/"
JWKS_URL = "https://id.example.test/jwks"
AUDIENCE = "sluicegate"


class Issuer:
    """A test identity provider: signing keys, a JWKS document and a fetch counter."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {"rsa-1": rsa.generate_private_key(65537, 2048)}
        self.fetches = 0

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
        issuer=ISSUER, jwks_url=JWKS_URL, audience=AUDIENCE,
        roles_map={"readers": "analyst"}, **options)], jwks_min_refetch_s=0)
    return JwtVerifier(config, JwksCache(ttl_s=600, min_refetch_s=0,
                                         transport=issuer.transport()))


async def test_a_valid_token_names_its_tenant_and_role(issuer: Issuer) -> None:
    token = issuer.token(tenant="globex", role="tenant_admin")
    assert looks_like_jwt(token) and not looks_like_jwt("sk-sluice-abc")
    principal = await verifier(issuer).principal(token)
    assert (principal.tenant, principal.role, principal.subject) == (
        "globex", "tenant_admin", "user-1")


async def test_roles_map_translates_the_issuers_names(issuer: Issuer) -> None:
    principal = await verifier(issuer).principal(issuer.token(role=["staff", "readers"]))
    assert principal.role == "analyst"
    with pytest.raises(AuthenticationFailed, match="no role"):
        await verifier(issuer).principal(issuer.token(role="staff"))


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
