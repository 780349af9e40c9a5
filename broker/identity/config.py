"""The `identity:` section of the config file: trusted OIDC/JWT issuers and their claims.

Roles are a closed set, so a typo in `roles_map` fails at start-up rather than letting a
token in with no role at all; so does a `trusted_proxies` entry that is not a CIDR (it would
otherwise fail every request that reads the caller's address).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from broker.identity.networks import parse_network

Role = Literal["admin", "tenant_admin", "member", "analyst"]
ROLES: tuple[Role, ...] = ("admin", "tenant_admin", "member", "analyst")
"""Every role, the most privileged first (the order decides between several a token names)."""


def role_rank(role: Role) -> int:
    """0 for the most privileged role (`admin`), growing as roles may do less."""
    return ROLES.index(role)


class IssuerConfig(BaseModel):
    """One trusted issuer: tokens whose `iss` equals `issuer` are checked against its keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1)
    jwks_url: HttpUrl
    audience: str = Field(min_length=1)
    tenant_claim: str = "tenant"
    """The claim naming the tenant the token's calls are billed to."""
    role_claim: str = "role"
    """The claim naming the caller's role: a string, or a list (the most privileged role
    among its values wins, whatever their order)."""
    roles_map: dict[str, Role] = Field(default_factory=dict)
    """The issuer's role names to ours (e.g. `{"gateway-readers": analyst}`). When set, only
    mapped values count: an unmapped value is ignored even if it spells one of our roles
    (the issuer's `admin` group is not necessarily ours). When empty, a claim value must
    already be one of our roles."""
    tenants: list[str] | None = Field(default=None, min_length=1)
    """The tenants this issuer may name (None: any). A shared identity provider is then
    trusted for its own tenants only, not to bill or administer someone else's."""
    max_role: Role = "admin"
    """The most privileged role this issuer's tokens may carry; a token claiming more is
    refused (not demoted, which would surprise its holder). The default keeps tokens that
    map to `admin` administering everything, as documented; `tenant_admin` stops this
    issuer from ever minting a global admin."""
    algorithms: tuple[Literal["RS256", "ES256"], ...] = ("RS256", "ES256")


class IdentityConfig(BaseModel):
    """Trusted issuers of bearer JWTs; without any, only API keys authenticate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuers: list[IssuerConfig] = Field(default_factory=list)
    jwks_ttl_s: float = Field(default=600.0, gt=0)
    """How long fetched keys are trusted before they are fetched again."""
    jwks_min_refetch_s: float = Field(default=30.0, ge=0)
    """An issuer's JWKS is fetched at most this often, whether for an unknown `kid` or after
    a failed fetch (no refetch storm, and no fetch per token while an issuer is down)."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """CIDRs of proxies whose X-Forwarded-For is believed for IP lists; empty: the socket
    peer address is the caller's address."""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, proxies: list[str]) -> list[str]:
        normalised = []
        for entry in proxies:
            try:
                normalised.append(str(parse_network(entry)))
            except ValueError as exc:
                raise ValueError(f"trusted_proxies entry {entry!r} is not an IP address or "
                                 f"CIDR ({exc})") from exc
        return normalised
