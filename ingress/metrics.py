"""`GET /metrics` of the HTTP edge: the process's Prometheus metrics, queue depth included.

Served without a key, as Prometheus scrapes (it sends no credentials), on the API's own
port so a plain `sluice ingress` needs nothing more. The numbers name models, deployments
and, if `SLUICE_METRICS_TENANT_LABELS` is on, tenants, but never a request or a key;
where the port faces the internet, set `SLUICE_METRICS_INGRESS=false` (the route is then
not there at all) or keep `/metrics` off the public load balancer.

Queue depth (`sluice_queue_depth_messages`) is measured here, on scrape, for every model
of the configuration: the edge knows them all, and the measurement is cached
(`broker.metrics.QueueDepth`), so any number of scrapers cost Kafka one measurement per
few seconds.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import Response

from broker import metrics
from ingress.services import IngressServices


def register_metrics_route(app: FastAPI, services: IngressServices) -> None:
    """Add `GET /metrics` unless `SLUICE_METRICS_INGRESS` turned it off."""
    if not metrics.settings().metrics_ingress:
        return
    depth = metrics.QueueDepth(services.kafka, services.config.models)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        await depth.refresh()
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type,
                        headers={"cache-control": "no-store"})
