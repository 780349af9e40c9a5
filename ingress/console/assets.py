"""The console's page and assets, from the package, with a strict Content-Security-Policy.

Only the files shipped in `static/` are served (looked up by exact name, so no path can
reach anything else), each with its content type. The policy allows scripts, styles,
images and fetches from this origin only, no inline script or style, no framing.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from starlette.responses import Response

from broker.errors import NotFound

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _load() -> dict[str, tuple[bytes, str]]:
    found = {}
    for item in files("ingress.console").joinpath("static").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in CONTENT_TYPES:
            found[item.name] = (item.read_bytes(), CONTENT_TYPES[suffix])
    return found


def asset_response(name: str, assets: dict[str, tuple[bytes, str]]) -> Response:
    """One shipped file with its type and the security headers; `NotFound` otherwise."""
    if name not in assets:
        raise NotFound(f"No console asset '{name}'.")
    body, media_type = assets[name]
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


def register_console_assets(app: FastAPI) -> None:
    """`GET /console` (the page) and `GET /console/static/{name}`."""
    assets = _load()  # a few kilobytes, read once

    @app.get("/console", include_in_schema=False)
    @app.get("/console/", include_in_schema=False)
    async def console_page() -> Response:
        return asset_response("index.html", assets)

    @app.get("/console/static/{name}", include_in_schema=False)
    async def console_asset(name: str) -> Response:
        return asset_response(name, assets)
