"""The `identity:` section of the config file: trusted OIDC/JWT issuers and their claims.

Roles are a closed set, so a typo in `roles_map` fails at start-up rather than letting a
token in with no role at all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

Role = Literal["admin", "tenant_admin", "member", "analyst"]
ROLES: tuple[Role, ...] = ("admin", "tenant_admin", "member", "analyst")


class IssuerConfig(BaseModel):
    """One trusted issuer: tokens whose `iss` equals `issuer` are checked against its keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1)
    jwks_url: HttpUrl
    audience: str = Field(min_length=1)
    tenant_claim: str = "tenant"
    """The claim naming the tenant the token's calls are billed to."""
    role_claim: str = "role"
    """The claim naming the caller's role (a string, or a list: the first mapped one wins)."""
    roles_map: dict[str, Role] = Field(default_factory=dict)
    """The issuer's role names to ours (e.g. `{"gateway-readers": analyst}`); without an
    entry a claim value must already be one of our roles."""
    algorithms: tuple[Literal["RS256", "ES256"], ...] = ("RS256", "ES256")


class IdentityConfig(BaseModel):
    """Trusted issuers of bearer JWTs; without any, only API keys authenticate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuers: list[IssuerConfig] = Field(default_factory=list)
    jwks_ttl_s: float = Field(default=600.0, gt=0)
    """How long fetched keys are trusted before they are fetched again."""
    jwks_min_refetch_s: float = Field(default=30.0, ge=0)
    """An unknown `kid` refetches at most this often per issuer (no refetch storm)."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """CIDRs of proxies whose X-Forwarded-For is believed for IP lists; empty: the socket
    peer address is the caller's address."""
