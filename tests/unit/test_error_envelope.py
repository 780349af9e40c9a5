"""Even an unexpected failure leaves the edge in OpenAI's error envelope."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from ingress.envelope import install_error_handlers


async def test_an_unexpected_exception_is_a_500_in_the_envelope() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "a bug" not in error["message"]  # internals stay in the log
