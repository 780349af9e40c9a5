"""Webhooks shared by ingress and the deliverer: signing, address checks, tables, store.

Ingress and `workers.deliver` never import each other, so what both need lives here:
Standard Webhooks signing (`signing`), the SSRF address policy (`addresses`), settings,
and the PostgreSQL tables and queries for endpoints, secrets and deliveries.
"""
