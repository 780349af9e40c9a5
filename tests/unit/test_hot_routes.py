"""The hot routes answer exactly as the FastAPI app would, errors included."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import AuthenticationFailed
from ingress.envelope import install_error_handlers, json_response
from ingress.hot_routes import HotRoutes


async def _echo(request: Request) -> Response:
    return json_response({"path": request.url.path, "body": (await request.body()).decode(),
                          "app": request.app.title})


async def _unauthenticated(request: Request) -> Response:
    raise AuthenticationFailed("Incorrect API key provided.")


async def _buggy(request: Request) -> Response:
    raise RuntimeError("a bug with secrets")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI(title="behind")
    install_error_handlers(app)

    @app.get("/v1/echo")
    async def fallback() -> Response:
        return json_response({"served_by": "fastapi"})

    hot = HotRoutes(app, {"/v1/echo": _echo, "/v1/auth": _unauthenticated, "/v1/bug": _buggy})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hot),
                                 base_url="http://ingress") as client:
        yield client


async def test_a_hot_route_reaches_its_handler_with_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/echo", content=b"hello")
    assert response.status_code == 200
    assert response.json() == {"path": "/v1/echo", "body": "hello", "app": "behind"}


async def test_other_methods_and_paths_go_to_the_app(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/echo")).json() == {"served_by": "fastapi"}
    missing = await client.post("/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_our_errors_leave_in_the_envelope(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth")
    assert response.status_code == 401
    assert response.json()["error"] == {
        "message": "Incorrect API key provided.", "type": "invalid_request_error",
        "param": None, "code": "invalid_api_key"}


async def test_a_bug_is_a_logged_500_without_internals(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="ingress.hot_routes"):
        response = await client.post("/v1/bug")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secrets" not in response.text
    assert "a bug with secrets" in caplog.text
