"""Metrics settings (environment variables `SLUICE_METRICS_*`)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class MetricsSettings(BaseSettings):
    """What the Prometheus metrics expose, and where.

    Attributes:
        metrics_tenant_labels: label requests, tokens and spend with the tenant. Off by
            default: every tenant multiplies those series, and tenants grow with customers
            (per-tenant numbers are exact in the ledger's SQL anyway).
        metrics_ingress: serve `GET /metrics` on the ingress's HTTP port, without a key
            (Prometheus scrapes without credentials). Turn it off where that port faces
            the internet and the numbers should stay private.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True, extra="ignore")

    metrics_tenant_labels: bool = False
    metrics_ingress: bool = True
