"""OIDC/JWT bearer tokens: keys fetched from each issuer's JWKS and cached; claims mapped
to a tenant and a role (README "Identity and roles").

Tokens are verified with PyJWT (signature, `exp`, `nbf`, `iss`, `aud`); a verified token is
remembered by its hash until it expires, so a caller reusing one token costs one dictionary
lookup per request, like an API key.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from broker.errors import AuthenticationFailed
from broker.identity.config import ROLES, IdentityConfig, IssuerConfig, Role
from ingress.services import Principal

MAX_KEYS_PER_ISSUER = 32  # a JWKS is a handful of keys; more is an attack or a mistake
MAX_JWKS_BYTES = 256 * 1024
MAX_CACHED_TOKENS = 10_000
LEEWAY_S = 30  # clock skew between the issuer and us


@dataclass(frozen=True, slots=True)
class RolePrincipal(Principal):
    """A caller with a role other than `member` (a plain `Principal` is a member)."""

    role: Role = "member"


@dataclass(frozen=True, slots=True)
class TokenPrincipal(RolePrincipal):
    """A caller identified by a JWT: the tenant and role its claims name."""

    issuer: str = ""
    subject: str = ""


def looks_like_jwt(secret: str) -> bool:
    """Whether `secret` is shaped like a compact JWS (a cheap test; keys never are)."""
    return secret.startswith("eyJ") and secret.count(".") == 2


class JwksCache:
    """Each issuer's signing keys by `kid`, fetched over HTTP and kept for a TTL.

    An unknown `kid` (the issuer rotated its keys) fetches again, at most once per
    `min_refetch_s` per issuer, so tokens with made-up kids cannot make us hammer the issuer.
    """

    def __init__(self, *, ttl_s: float, min_refetch_s: float,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._transport = transport
        self._ttl_s = ttl_s
        self._min_refetch_s = min_refetch_s
        self._clock = clock
        self._keys: dict[str, dict[str, jwt.PyJWK]] = {}
        self._fetched_at: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def key(self, issuer: IssuerConfig, kid: str | None) -> jwt.PyJWK:
        """The issuer's key named `kid` (or its only key when the token names none)."""
        url = str(issuer.jwks_url)
        fetched_at = self._fetched_at.get(url)
        now = self._clock()
        if fetched_at is None or now - fetched_at >= self._ttl_s:
            await self._refresh(url, fetched_at)
        found = self._find(url, kid)
        if found is None and now - self._fetched_at.get(url, now) >= self._min_refetch_s:
            await self._refresh(url, self._fetched_at.get(url))
            found = self._find(url, kid)
        if found is None:
            raise AuthenticationFailed(f"The token's signing key ({kid}) is not one of "
                                       f"issuer {issuer.issuer}'s keys.")
        return found

    def _find(self, url: str, kid: str | None) -> jwt.PyJWK | None:
        keys = self._keys.get(url, {})
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    async def _refresh(self, url: str, seen_fetched_at: float | None) -> None:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            if self._fetched_at.get(url) != seen_fetched_at:
                return  # another caller fetched while we waited
            try:
                # A client per fetch: fetches are minutes apart, and nothing stays open
                # for the process to close.
                async with httpx.AsyncClient(transport=self._transport, timeout=5.0) as client:
                    response = await client.get(url)
                response.raise_for_status()
                if len(response.content) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS too large")
                keys = _parse_jwks(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                # Keep serving the keys we had: a flaky issuer must not log everyone out,
                # and try it again only after the refetch interval, not on every request.
                if url in self._keys:
                    self._fetched_at[url] = (self._clock() - self._ttl_s
                                             + self._min_refetch_s)
                    return
                raise AuthenticationFailed(
                    "The token's issuer keys could not be fetched; retry later.") from exc
            self._keys[url] = keys
            self._fetched_at[url] = self._clock()


def _parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"][:MAX_KEYS_PER_ISSUER]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ("RSA", "EC"):
            continue  # a shared-secret key would verify HMAC tokens anyone could forge

        try:
            key = jwt.PyJWK.from_dict(entry)
        except jwt.PyJWTError:
            continue  # a key type we do not verify with (e.g. an encryption key)
        keys[str(entry.get("kid", ""))] = key
    return keys


class JwtVerifier:
    """Turns a bearer JWT into its caller, or raises `AuthenticationFailed`."""

    def __init__(self, config: IdentityConfig, jwks: JwksCache,
                 clock: Callable[[], float] = time.time) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in config.issuers}
        self._jwks = jwks
        self._clock = clock
        self._verified: OrderedDict[bytes, tuple[TokenPrincipal, float]] = OrderedDict()

    async def principal(self, token: str) -> TokenPrincipal:
        """The caller `token` names, verified (signature, exp, nbf, iss, aud)."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(digest)
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        principal, expires_at = await self._verify(token)
        self._verified[digest] = (principal, expires_at)
        if len(self._verified) > MAX_CACHED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[TokenPrincipal, float]:
        try:
            header = jwt.get_unverified_header(token)
            claimed = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("Malformed bearer token.") from exc
        issuer = self._issuers.get(str(claimed.get("iss", "")))
        if issuer is None:
            raise AuthenticationFailed("The token's issuer is not trusted here.")
        if header.get("alg") not in issuer.algorithms:
            raise AuthenticationFailed(f"Token algorithm {header.get('alg')} is not allowed.")
        key = await self._jwks.key(issuer, header.get("kid"))
        try:
            claims = jwt.decode(
                token, key, algorithms=list(issuer.algorithms), audience=issuer.audience,
                issuer=issuer.issuer, leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("The bearer token has expired.") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthenticationFailed("The bearer token is for another audience.") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"Invalid bearer token: {exc}.") from exc
        return _principal_of(issuer, claims), float(claims["exp"])


def _principal_of(issuer: IssuerConfig, claims: dict[str, Any]) -> TokenPrincipal:
    tenant = claims.get(issuer.tenant_claim)
    if not isinstance(tenant, str) or not tenant:
        raise AuthenticationFailed(f"The token has no '{issuer.tenant_claim}' claim.")
    subject = str(claims.get("sub", ""))
    # Per issuer: two issuers' identical `sub` are two callers (limits, approvals).
    issuer_tag = hashlib.sha256(issuer.issuer.encode()).hexdigest()[:8]
    return TokenPrincipal(tenant=tenant, api_key_id=f"jwt:{issuer_tag}:{subject}"[:200],
                          role=_role_of(issuer, claims.get(issuer.role_claim)),
                          issuer=issuer.issuer, subject=subject)


def _role_of(issuer: IssuerConfig, claimed: Any) -> Role:
    values = claimed if isinstance(claimed, list) else [claimed]
    for value in values:
        if not isinstance(value, str):
            continue
        if value in issuer.roles_map:
            return issuer.roles_map[value]
        for role in ROLES:
            if value == role:
                return role
    raise AuthenticationFailed(f"The token's '{issuer.role_claim}' claim names no role "
                               f"of this gateway ({', '.join(ROLES)}).")
