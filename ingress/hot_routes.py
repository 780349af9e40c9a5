"""The ASGI entry point uvicorn serves: the two routes every request takes, served directly.

Through FastAPI, each call to `POST /v1/chat/completions` also passed eight layers of
middleware (server errors, exceptions, exit stacks, body limits, telemetry, routing), and
every resumption of the waiting handler went back through all of them: a tenth of the
ingress's CPU at 64 callers. Here those two routes get exactly what they use: the same
handlers, the same error envelope. Everything else (and any other method on these paths)
goes to the FastAPI application unchanged, lifespan included.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from broker.errors import SluiceError
from ingress.envelope import error_response, unexpected_error_response

Endpoint = Callable[[Request], Awaitable[Response]]

logger = logging.getLogger(__name__)


class HotRoutes:
    """Serve `routes` (POST path → handler) directly; pass everything else to `app`."""

    def __init__(self, app: FastAPI, routes: Mapping[str, Endpoint]):
        self.app = app
        self._routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._routes.get(scope["path"])
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # what Starlette would set; `request.app` keeps working
        try:
            response = await endpoint(Request(scope, receive, send))
        except SluiceError as exc:
            response = error_response(exc)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            response = unexpected_error_response()
        await response(scope, receive, send)


def serve(app: FastAPI) -> HotRoutes:
    """What uvicorn runs: `app` with its hot routes (from `create_app`) served directly."""
    return HotRoutes(app, app.state.hot_routes)
