"""The console at `/console`: a small page for operators and analysts over JSON endpoints.

The page (`static/`, shipped in the package: no CDN, no build step) holds no data and
needs no key; it asks for a tenant API key or the admin key, keeps it in the tab's
`sessionStorage`, and calls `/console/api/...` and the existing APIs (`/v1/usage`,
`/v1/admin/keys`) with `Authorization: Bearer`. No cookies, so no cross-site request can
act as the signed-in user. What each key sees: `ingress.console.api`.
"""

from __future__ import annotations

from fastapi import FastAPI

from ingress.console.api import register_console_api
from ingress.console.assets import register_console_assets
from ingress.services import IngressServices


def register_console_routes(app: FastAPI, services: IngressServices) -> None:
    """Add the console's page and assets, and its API when the edge has a database."""
    register_console_assets(app)
    register_console_api(app, services)


__all__ = ["register_console_routes"]
