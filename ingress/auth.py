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
    throttle: LoginThrottle | None = getattr(request.app.state, "login_throttle", None)
    source = request.client.host if request.client is not None else "unknown"
    wait_s = throttle.retry_after_s(source) if throttle is not None else None
    principal = await keys.principal(secret.strip(), cached_only=wait_s is not None)
    if principal is None and wait_s is not None:
        raise LimitExceeded(
            "Too many failed authentications from your address; retry later with a valid "
            "key.", code="too_many_failed_logins", retry_after_s=wait_s)
    if principal is None:
        if throttle is not None:
            throttle.failed(source)
        shown = secret.strip()[:14]
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}…")
    return principal
