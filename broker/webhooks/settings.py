"""Webhook settings (environment variables `SLUICE_WEBHOOK_*` and `SLUICE_DELIVER_*`)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.webhooks.addresses import AddressPolicy


class WebhookSettings(BaseSettings):
    """How ingress checks webhook URLs and how `sluice deliver` sends them.

    The retry schedule is exponential: attempt n waits about `min_backoff_s * 2**(n-1)`
    (full jitter in its upper half, capped at `max_backoff_s`), or longer if the receiver
    said `Retry-After` on 429/502/503/504 (capped at `max_retry_after_s`).
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True, extra="ignore")

    # Hosts or networks admitted although not global, comma-separated; development only.
    webhook_allow_hosts: str = ""
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_min_backoff_s: float = Field(default=5.0, gt=0)
    webhook_max_backoff_s: float = Field(default=6 * 3600.0, gt=0)
    webhook_max_retry_after_s: float = Field(default=24 * 3600.0, gt=0)
    # Bodies above this size are read no further (the status code is what counts).
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)
    # Every final result goes to each of a tenant's endpoints: their number is bounded.
    webhook_max_endpoints_per_tenant: int = Field(default=10, ge=1, le=1000)
    # Concurrent attempts of one deliverer; a slow receiver holds one slot, not all.
    deliver_concurrency: int = Field(default=64, ge=1, le=10_000)
    # Deliveries held in memory with their due time; more wait in PostgreSQL only.
    deliver_max_scheduled: int = Field(default=10_000, ge=1)
    # How often PostgreSQL is swept for due deliveries (after restarts, overflow, redeliver).
    deliver_sweep_interval_s: float = Field(default=1.0, gt=0)
    # How long a claimed attempt is ours; another deliverer may take it over after that.
    deliver_lease_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _attempt_ends_within_its_lease(self) -> WebhookSettings:
        # An attempt still running when its lease ends could be sent again by another
        # deliverer; the whole-attempt deadline keeps it inside the lease.
        if self.webhook_timeout_s >= self.deliver_lease_s:
            raise ValueError(
                f"SLUICE_WEBHOOK_TIMEOUT_S ({self.webhook_timeout_s:g}) must be shorter than "
                f"SLUICE_DELIVER_LEASE_S ({self.deliver_lease_s:g})")
        return self

    def address_policy(self) -> AddressPolicy:
        """The SSRF policy with this allowlist."""
        return AddressPolicy.parse(self.webhook_allow_hosts)
