"""Who is calling and what they may do: API keys, OIDC/JWT bearer tokens, roles, IP lists.

This is the one place roles are enforced (README "Identity and roles"): every route
authenticates through `authenticate`, which also checks the caller's address against its IP
lists and its role against what the route needs (`ROUTE_PERMISSIONS`).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Literal

from starlette.requests import Request

from broker.errors import AccessNotApproved, AuthenticationFailed, LimitExceeded
from broker.identity.config import IdentityConfig, Role
from broker.stores.access_lists import Access, AccessCache
from ingress.identity import (
    JwksCache,
    JwtVerifier,
    RolePrincipal,
    TokenPrincipal,
    looks_like_jwt,
)
from ingress.login_throttle import LoginThrottle
from ingress.postgres import PostgresApiKeys
from ingress.services import ApiKeyFinder, Principal

Permission = Literal["use_models", "read_usage", "manage_batches", "manage_webhooks",
                     "manage_keys", "administer"]

# The role matrix (README "Identity and roles" shows the same table).
GRANTS: dict[Role, frozenset[Permission]] = {
    "admin": frozenset({"use_models", "read_usage", "manage_batches", "manage_webhooks",
                        "manage_keys", "administer"}),
    "tenant_admin": frozenset({"use_models", "read_usage", "manage_batches",
                               "manage_webhooks", "manage_keys"}),
    # Members managed their tenant's webhooks before roles existed, and still do.
    "member": frozenset({"use_models", "read_usage", "manage_batches", "manage_webhooks"}),
    "analyst": frozenset({"read_usage"}),
}

# (method or "*", path prefix, permission), first match wins; anything not listed needs
# `use_models`, so a route added later is closed to analysts until someone decides.
ROUTE_PERMISSIONS: tuple[tuple[str, str, Permission], ...] = (
    ("*", "/v1/admin/keys", "manage_keys"),
    ("*", "/v1/admin/", "administer"),
    ("POST", "/console/api/", "administer"),  # dead-letter replay
    ("GET", "/console/api/keys", "manage_keys"),  # as /v1/admin/keys: a leaked key lists none
    ("GET", "/console/api/", "read_usage"),
    ("GET", "/v1/usage", "read_usage"),
    ("GET", "/v1/ledger", "read_usage"),
    ("GET", "/v1/feedback", "read_usage"),  # feedback reports are usage reports (A/B, canary)
    ("GET", "/v1/requests/", "read_usage"),
    ("GET", "/v1/models", "read_usage"),
    ("GET", "/asyncapi.json", "read_usage"),
    ("*", "/v1/files", "manage_batches"),
    ("*", "/v1/batches", "manage_batches"),
    ("*", "/v1/webhooks/", "manage_webhooks"),  # secrets included: not for analysts
)


async def authenticate(request: Request, keys: ApiKeyFinder) -> Principal:
    """The caller of `request`, allowed to call this route from this address.

    Raises:
        AuthenticationFailed: no, unknown or invalid credentials.
        AccessNotApproved: `ip_not_allowed`, or `insufficient_role` naming the role needed.
    """
    authorization = request.headers.get("authorization", "")
    scheme, _, secret = authorization.partition(" ")
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'; "
            "`sluice dev` prints a development key, `sluice keys create` makes one."
        )
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationFailed("Malformed Authorization header; use 'Bearer <key>'.")
    return await authenticate_key(request, keys, secret.strip())


async def authenticate_key(request: Request, keys: ApiKeyFinder, secret: str) -> Principal:
    """The owner of API key (or JWT) `secret`, however `request` carried it (a bearer
    token, or Anthropic's `x-api-key` header), checked like `authenticate`; failed key
    lookups are throttled."""
    if looks_like_jwt(secret):
        principal: Principal | None = await _jwt_principal(request, secret)
    else:
        throttle: LoginThrottle | None = getattr(request.app.state, "login_throttle", None)
        if throttle is None:
            principal = await keys.principal(secret)
        else:
            principal = await _throttled(request, keys, secret, throttle)
        if principal is None:
            raise AuthenticationFailed(f"Incorrect API key provided: {secret[:14]}…")
    assert principal is not None
    access = await _access(request, keys, principal)
    if access is not None:
        if not access.admits(address := client_address(request)):
            raise AccessNotApproved(f"Requests from {address} are not allowed for this "
                                    "key or tenant.", code="ip_not_allowed")
        if access.role != "member" and not isinstance(principal, RolePrincipal):
            principal = with_role(principal, access.role)
    authorize(principal, permission_for(request.scope["method"], request.scope["path"]))
    return principal


def with_role(principal: Principal, role: Role) -> RolePrincipal:
    """`principal` carrying `role`."""
    fields = {field.name: getattr(principal, field.name)
              for field in dataclasses.fields(Principal)}
    return RolePrincipal(**fields, role=role)


def role_of(principal: Principal) -> Role:
    """The caller's role; a key without one (issued before roles) is a `member`."""
    role: Role = getattr(principal, "role", None) or "member"
    return role


def authorize(principal: Principal, permission: Permission) -> None:
    """Refuse (403 `insufficient_role`) unless the caller's role grants `permission`."""
    role = role_of(principal)
    if permission in GRANTS[role]:
        return
    needed = [name for name, granted in GRANTS.items() if permission in granted]
    raise AccessNotApproved(
        f"Your role '{role}' may not do this ({permission}); it needs the role "
        f"{' or '.join(repr(name) for name in reversed(needed))}.", code="insufficient_role")


@lru_cache(maxsize=4096)  # a handful of routes; ids in paths make the rest
def permission_for(method: str, path: str) -> Permission:
    """What a request of `method` to `path` needs (`ROUTE_PERMISSIONS`)."""
    for wanted, prefix, permission in ROUTE_PERMISSIONS:
        if (wanted == "*" or wanted == method) and path.startswith(prefix):
            return permission
    return "use_models"


def client_address(request: Request) -> str:
    """The caller's address: the socket peer, or, when that peer is a trusted proxy
    (`identity.trusted_proxies`), the nearest untrusted address in X-Forwarded-For (all its
    header lines read as one list)."""
    peer = request.client.host if request.client is not None else ""
    trusted = tuple(_identity(request).trusted_proxies)
    proxies = Access(allow_lists=(trusted,))
    if not trusted or not proxies.admits(peer):
        return peer
    # Every header line, in order: a proxy may append its own line rather than extend the
    # client's, and then the line the client forged comes first.
    lines = ",".join(request.headers.getlist("x-forwarded-for"))
    forwarded = [hop.strip() for hop in lines.split(",")]
    for hop in reversed([hop for hop in forwarded if hop]):
        if not proxies.admits(hop):
            return hop
    return peer


async def _access(request: Request, keys: ApiKeyFinder,
                  principal: Principal) -> Access | None:
    """The stored role and IP lists of the caller's key (or a token caller's tenant);
    None when keys do not live in PostgreSQL (in-memory finders: members without lists)."""
    if not isinstance(keys, PostgresApiKeys) and not isinstance(principal, TokenPrincipal):
        return None
    state = request.app.state
    cache: AccessCache | None = getattr(state, "access_cache", None)
    if cache is None:
        ingress = getattr(state, "ingress", None)
        ledger = getattr(getattr(ingress, "services", None), "ledger", None)
        if ledger is None:
            return None
        cache = state.access_cache = AccessCache(ledger.engine)
    key_id = None if isinstance(principal, TokenPrincipal) else principal.api_key_id
    return await cache.get(principal.tenant, key_id)


def _identity(request: Request) -> IdentityConfig:
    ingress = getattr(request.app.state, "ingress", None)
    config = getattr(getattr(ingress, "services", None), "config", None)
    identity = getattr(config, "identity", None)
    return identity if isinstance(identity, IdentityConfig) else IdentityConfig()


async def _jwt_principal(request: Request, token: str) -> Principal:
    state = request.app.state
    verifier: JwtVerifier | None = getattr(state, "jwt_verifier", None)
    if verifier is None:
        identity = _identity(request)
        if not identity.issuers:
            raise AuthenticationFailed("Bearer tokens (JWT) are not accepted here: no "
                                       "issuer is configured; use an API key.")
        jwks = JwksCache(ttl_s=identity.jwks_ttl_s, min_refetch_s=identity.jwks_min_refetch_s)
        verifier = state.jwt_verifier = JwtVerifier(identity, jwks)
    return await verifier.principal(token)


async def _throttled(request: Request, keys: ApiKeyFinder, secret: str,
                     throttle: LoginThrottle) -> Principal | None:
    known = await keys.principal(secret, cached_only=True)
    if known is not None:
        return known
    source = request.client.host if request.client is not None else "unknown"
    wait_s = throttle.retry_after_s(source)
    if wait_s is not None:
        raise LimitExceeded(
            "Too many failed authentications from your address; retry later with a valid "
            "key.", code="too_many_failed_logins", retry_after_s=wait_s)
    key = hash(secret)  # this process's own hash: the secret itself is not kept
    attempt = throttle.attempt(source, key)  # counted now: concurrent guesses see it
    try:
        principal = await keys.principal(secret)
    except BaseException:  # the database failed (or we were cancelled): no failed login
        throttle.settle(source, key, attempt, valid=True)
        raise
    throttle.settle(source, key, attempt, valid=principal is not None)
    return principal


async def admin_scope(request: Request, keys: ApiKeyFinder, *, admin_key: bool,
                      permission: Permission | None = None) -> str | None:
    """The tenants an admin route may touch for this caller: None for every tenant (the
    admin key, or an `admin`-role caller), else the caller's own tenant (a `tenant_admin`
    on the key routes). Anyone else gets 401 or 403 `insufficient_role` from `authenticate`.
    """
    if admin_key:
        return None
    principal = await authenticate(request, keys)
    if permission is not None:
        # Here too, not only through the route table: a route's path can change (a mount
        # under a prefix), what the route needs must not.
        authorize(principal, permission)
    return None if role_of(principal) == "admin" else principal.tenant

