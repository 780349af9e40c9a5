"""Bearer API keys."""

from __future__ import annotations

from starlette.requests import Request

from broker.errors import AuthenticationFailed, LimitExceeded
from ingress.login_throttle import LoginThrottle
from ingress.services import ApiKeyFinder, Principal


async def authenticate(request: Request, keys: ApiKeyFinder) -> Principal:
    """The caller of `request`, or `AuthenticationFailed` saying what is wrong."""
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
    """The owner of API key `secret`, however `request` carried it (a bearer token, or
    Anthropic's `x-api-key` header), or `AuthenticationFailed`; failures are throttled."""
    throttle: LoginThrottle | None = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        principal = await keys.principal(secret)
    else:
        principal = await _throttled(request, keys, secret, throttle)
    if principal is None:
        raise AuthenticationFailed(f"Incorrect API key provided: {secret[:14]}…")
    return principal


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
