"""OIDC/JWT bearer tokens: keys fetched from each issuer's JWKS and cached; claims mapped
to a tenant and a role (README "Identity and roles").

Tokens are verified with PyJWT (signature, `exp`, `nbf`, `iss`, `aud`); a verified token is
remembered by its hash until it expires, so a caller reusing one token costs one dictionary
lookup per request, like an API key. An issuer is trusted only as far as its config says:
its `roles_map` (unmapped claim values never count), the `tenants` it may name and the most
privileged role it may grant (`max_role`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from broker.errors import AuthenticationFailed, IssuerUnavailable
from broker.identity.config import ROLES, IdentityConfig, IssuerConfig, Role, role_rank
from ingress.services import Principal

MAX_KEYS_PER_ISSUER = 32  # a JWKS is a handful of keys; more is an attack or a mistake
MAX_JWKS_BYTES = 256 * 1024
MAX_CACHED_TOKENS = 10_000
LEEWAY_S = 30  # clock skew between the issuer and us
log = logging.getLogger("sluice.ingress")


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

    An issuer is asked at most once per `min_refetch_s`, whatever the reason: an unknown
    `kid` (the issuer rotated its keys, or a token made one up) or a failed fetch (the
    issuer is down). So neither made-up kids nor an outage turn tokens into one outbound
    fetch each; tokens arriving meanwhile are answered from what we have, at once.
    """

    def __init__(self, *, ttl_s: float, min_refetch_s: float,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._transport = transport
        self._ttl_s = ttl_s
        self._min_refetch_s = min_refetch_s
        self._clock = clock
        self._keys: dict[str, dict[str, jwt.PyJWK]] = {}
        self._fetched_at: dict[str, float] = {}  # the last fetch that succeeded
        self._attempted_at: dict[str, float] = {}  # the last fetch, succeeded or not
        self._failed_at: dict[str, float] = {}  # set while the latest attempt failed
        self._locks: dict[str, asyncio.Lock] = {}

    async def key(self, issuer: IssuerConfig, kid: str | None) -> jwt.PyJWK:
        """The issuer's key named `kid` (or its only key when the token names none).

        Raises:
            AuthenticationFailed: the issuer has no such key.
            IssuerUnavailable: the issuer could not be asked, and the keys we hold (if
                any) do not include `kid`.
        """
        url = str(issuer.jwks_url)
        now = self._clock()
        fetched_at = self._fetched_at.get(url)
        refreshed = False
        if (fetched_at is None or now - fetched_at >= self._ttl_s) and self._may_fetch(url, now):
            await self._refresh(url)
            refreshed = True
        else:
            await self._fetch_in_flight(url)  # another caller is asking: its answer is ours
        found = self._find(url, kid)
        if found is None and not refreshed and self._may_fetch(url, now):
            await self._refresh(url)
            found = self._find(url, kid)
        if found is not None:
            return found
        if url in self._failed_at:
            # We could not check this token, not found it wrong: a 401 would make clients
            # give up on a token that may be fine once the issuer answers.
            retry_after_s = max(0.0, self._failed_at[url] + self._min_refetch_s - now)
            raise IssuerUnavailable(
                f"The signing keys of issuer {issuer.issuer} could not be fetched; the token "
                f"could not be checked. Retry in {max(1, round(retry_after_s))}s.",
                retry_after_s=retry_after_s)
        raise AuthenticationFailed(f"The token's signing key ({kid}) is not one of "
                                   f"issuer {issuer.issuer}'s keys.")

    async def _fetch_in_flight(self, url: str) -> None:
        # A fetch under way counts as an attempt (`_may_fetch` says no), so without this
        # wait every token arriving during an ingress's first fetch would be refused.
        lock = self._locks.get(url)
        if lock is not None and lock.locked():
            async with lock:
                pass

    def _may_fetch(self, url: str, now: float) -> bool:
        attempted_at = self._attempted_at.get(url)
        return attempted_at is None or now - attempted_at >= self._min_refetch_s

    def _find(self, url: str, kid: str | None) -> jwt.PyJWK | None:
        keys = self._keys.get(url, {})
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    async def _refresh(self, url: str) -> None:
        seen_attempt = self._attempted_at.get(url)
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            if self._attempted_at.get(url) != seen_attempt:
                return  # another caller asked the issuer while we waited
            attempted_at = self._attempted_at[url] = self._clock()
            try:
                keys = await self._fetch(url)
            except (httpx.HTTPError, ValueError) as exc:
                # Keep serving the keys we had: a flaky issuer must not log everyone out.
                self._failed_at[url] = attempted_at
                log.warning("JWKS fetch from %s failed (next attempt in %ss): %s", url,
                            self._min_refetch_s, exc)
                return
            self._keys[url] = keys
            self._fetched_at[url] = attempted_at
            self._failed_at.pop(url, None)

    async def _fetch(self, url: str) -> dict[str, jwt.PyJWK]:
        # A client per fetch: fetches are minutes apart, and nothing stays open for the
        # process to close.
        async with httpx.AsyncClient(transport=self._transport, timeout=5.0) as client:
            response = await client.get(url)
        response.raise_for_status()
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError("JWKS too large")
        return _parse_jwks(response.json())


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
    if issuer.tenants is not None and tenant not in issuer.tenants:
        raise AuthenticationFailed(f"The token names tenant '{tenant}', which issuer "
                                   f"{issuer.issuer} may not speak for.")
    role = _role_of(issuer, claims.get(issuer.role_claim))
    if role_rank(role) < role_rank(issuer.max_role):
        raise AuthenticationFailed(f"The token claims the role '{role}', above what issuer "
                                   f"{issuer.issuer} may grant (max_role: {issuer.max_role}).")
    subject = str(claims.get("sub", ""))
    # Per issuer: two issuers' identical `sub` are two callers (limits, approvals).
    issuer_tag = hashlib.sha256(issuer.issuer.encode()).hexdigest()[:8]
    return TokenPrincipal(tenant=tenant, api_key_id=f"jwt:{issuer_tag}:{subject}"[:200],
                          role=role, issuer=issuer.issuer, subject=subject)


def _role_of(issuer: IssuerConfig, claimed: Any) -> Role:
    """The most privileged role the claim's values name: through `roles_map` only when the
    issuer has one (its `admin` group is not ours unless mapped), else our role names
    themselves. The most privileged wins so that the claim's order cannot matter."""
    values = [value for value in (claimed if isinstance(claimed, list) else [claimed])
              if isinstance(value, str)]
    if issuer.roles_map:
        roles = [issuer.roles_map[value] for value in values if value in issuer.roles_map]
    else:
        roles = [role for role in ROLES if role in values]
    if not roles:
        # The issuer's own names stay in our config: callers learn that a mapping exists.
        expected = ("none of its values is in this issuer's roles_map" if issuer.roles_map
                    else f"one of {', '.join(ROLES)}")
        raise AuthenticationFailed(f"The token's '{issuer.role_claim}' claim names no role "
                                   f"of this gateway ({expected}).")
    return min(roles, key=role_rank)
