"""`GET /livez` and `GET /readyz` of the HTTP edge (probes of orchestrators and compose).

Ready means the edge can accept a request and keep its promise (DESIGN.md, guarantee 1):
the request producer is connected to Kafka, the reply listener owns its reply topic's
partitions (so a waiting caller gets its answer), and PostgreSQL answers (keys, polling,
usage). The database probe is cached for two seconds (`broker.ops.CachedProbe`): probes
arriving every second from every load balancer never become load on PostgreSQL.
`/health` (in `ingress.app`) stays as it was for callers that use it.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.responses import Response

from broker.ops import CachedProbe, Check, Readiness, flag
from broker.stores.health import ping_database
from ingress.envelope import json_response
from ingress.publisher import RequestPublisher
from ingress.replies import ReplyListener

if TYPE_CHECKING:  # a handle passed to the probe; SQL is the store's alone
    from sqlalchemy.ext.asyncio import AsyncEngine


def ingress_readiness(publisher: RequestPublisher, replies: ReplyListener,
                      engine: AsyncEngine | None) -> Readiness:
    """The edge's readiness checks (no database check without a ledger database)."""

    async def replies_assigned() -> str | None:
        listening = await replies.wait_ready(0)
        return None if listening else f"reply topic {replies.topic} not assigned yet"

    checks: dict[str, Check] = {
        "kafka": flag(lambda: publisher.ready, "request producer not connected to Kafka"),
        "kafka_replies": replies_assigned,
    }
    if engine is not None:
        checks["postgres"] = CachedProbe(partial(ping_database, engine))
    return Readiness(checks)


def register_health_routes(app: FastAPI, readiness: Readiness) -> None:
    """Add `/livez` (the event loop answers) and `/readyz` (every check passes)."""

    @app.get("/livez")
    async def livez() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        verdict = await readiness.evaluate()
        return json_response(verdict.as_json(), 200 if verdict.ready else 503)
