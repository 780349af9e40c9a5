"""Prompt templates over HTTP (README "Prompt templates").

- `POST /v1/admin/templates` (admin): create a template, or its next version.
- `GET /v1/admin/templates`, `GET /v1/admin/templates/{name}[?version=N]` (admin).
- `POST /v1/templates/{name}/completions` (any key): `{"variables": {...}, "version": N,
  ...overrides}` renders the template in the sandbox and runs the result through the
  ordinary chat pipeline (admission, Kafka, workers), waiting, streaming or
  `Prefer: respond-async` exactly like `/v1/chat/completions`. The request carries the
  template and version in its metadata; the ledger stores them in `requests`.

"Admin" is the admin key or an `admin`-role caller (`ingress.access.require_administrator`).
A template whose latest version has `requires_approval` answers 403 (`access_required`,
`access_pending`, `access_denied`) until an admin approved `template:<name>` for the
caller's key or tenant (README "Access approval").
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import InvalidRequest, NotFound
from broker.stores.templates import create_template, get_template, list_templates
from broker.templates import PromptTemplate, TemplateSpec, render_body
from broker.templates.rendering import check_template
from broker.templates.spec import parse_version
from ingress.access import require_administrator
from ingress.auth import authenticate
from ingress.body import read_json_object, validate_body
from ingress.envelope import json_response
from schemas import ChatCompletionRequest

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ingress.app import Ingress

# How long a call without `version` may use a latest version already read: a new version
# is served by every ingress within this many seconds. Pinned versions never change.
LATEST_TTL_S = 5.0


class TemplateCache:
    """Templates read from PostgreSQL at most once per version (latest: once per TTL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pinned: dict[tuple[str, int], PromptTemplate] = {}
        self._latest: dict[str, tuple[float, PromptTemplate]] = {}

    async def get(self, name: str, version: int | None) -> PromptTemplate:
        """Version `version` of `name` (the latest when None).

        Raises:
            NotFound: no such template or version.
        """
        if version is not None and (name, version) in self._pinned:
            return self._pinned[name, version]
        now = time.monotonic()
        latest = self._latest.get(name)
        if version is None and latest is not None and now - latest[0] < LATEST_TTL_S:
            return latest[1]
        template = await get_template(self._engine, name, version)
        if template is None:
            which = f"version {version} of " if version is not None else ""
            raise NotFound(f"No {which}template '{name}'.")
        if len(self._pinned) >= 1024:  # bounded: a caller cannot grow it without limit
            self._pinned.clear()
        self._pinned[name, template.version] = template
        if version is None:
            self._latest[name] = (now, template)
        return template

    def forget(self, name: str) -> None:
        """Drop the latest version read of `name` (this ingress just created a new one)."""
        self._latest.pop(name, None)


def new_template(data: dict[str, Any]) -> TemplateSpec:
    """A template spec from a request body or a file, checked to render.

    Raises:
        InvalidRequest: the spec is malformed or its messages are no valid templates.
    """
    spec = validate_body(TemplateSpec, data)
    check_template(spec)
    return spec


def register_template_routes(app: FastAPI, ingress: Ingress) -> None:
    """Add the template routes, if the services include ledger access (PostgreSQL)."""
    ledger = ingress.services.ledger
    if ledger is None:
        return
    engine = ledger.engine
    cache = TemplateCache(engine)
    limit = ingress.services.settings.max_body_bytes

    @app.post("/v1/admin/templates")
    async def templates_create(request: Request) -> Response:
        await require_administrator(request, ingress.services)
        spec = new_template(await read_json_object(request, limit))
        template = await create_template(engine, spec)
        cache.forget(template.name)  # other ingress instances see it within LATEST_TTL_S
        return json_response(template.body(), 201)

    @app.get("/v1/admin/templates")
    async def templates_list(request: Request) -> Response:
        await require_administrator(request, ingress.services)
        data = [template.body() for template in await list_templates(engine)]
        return json_response({"object": "list", "data": data})

    @app.get("/v1/admin/templates/{name}")
    async def templates_show(request: Request, name: str) -> Response:
        await require_administrator(request, ingress.services)
        version = parse_version(request.query_params.get("version"))
        template = await get_template(engine, name, version)
        if template is None:
            raise NotFound(f"No template '{name}'" + (f" version {version}." if version else "."))
        return json_response(template.body())

    @app.post("/v1/templates/{name}/completions")
    async def template_completions(request: Request, name: str) -> Response:
        return await _completions(request, name, ingress, cache)


async def _completions(request: Request, name: str, ingress: Ingress,
                       cache: TemplateCache) -> Response:
    wait = "respond-async" not in request.headers.get("prefer", "").lower()
    principal = await authenticate(request, ingress.services.api_keys)
    # The latest version's flag decides for every version: pinning an older version must
    # not get around a requirement added later. Checked before anything is rendered.
    latest = await cache.get(name, None)
    if latest.requires_approval:
        await ingress.access.require(principal.tenant, principal.api_key_id,
                                     f"template:{latest.name}")
    data = await read_json_object(request, ingress.services.settings.max_body_bytes)
    variables = data.pop("variables", None) or {}
    if not isinstance(variables, dict):
        raise InvalidRequest("variables must be an object.", param="variables")
    version = parse_version(data.pop("version", None))
    template = latest if version is None else await cache.get(name, version)
    # In a thread: a render is bounded in size (a prompt past the largest body accepted is
    # refused) but not in time, and a slow one must not hold every other request.
    rendered = await asyncio.to_thread(render_body, template, variables, data,
                                       max_chars=ingress.services.settings.max_body_bytes)
    body = validate_body(ChatCompletionRequest, rendered)
    inference = await ingress.admit(request, principal, body, wait=wait)
    # Metadata travels with the request through Kafka to the ledger's `requests` row.
    inference = inference.model_copy(update={"metadata": {
        **inference.metadata, "template": template.name,
        "template_version": str(template.version)}})
    if not wait:
        await ingress.publish(request, inference)
        return ingress._accepted(request, inference)
    if body.stream:
        return await ingress._stream(request, inference)
    return await ingress._answer(request, inference)
