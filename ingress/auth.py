"""Bearer API keys."""

from __future__ import annotations

from starlette.requests import Request

from broker.errors import AuthenticationFailed
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
    principal = await keys.principal(secret.strip())
    if principal is None:
        shown = secret.strip()[:14]
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}…")
    return principal
