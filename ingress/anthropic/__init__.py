"""Anthropic's Messages API at the edge, for any configured model.

Code written for the official `anthropic` SDK works unchanged: `POST /v1/messages` (whole
or streamed), `POST /v1/messages/count_tokens` and the Message Batches API. Requests are
translated to our unified OpenAI form and queued like the OpenAI routes' (the worker picks
the provider); answers, streams and errors are rendered back in Anthropic's shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.routing import Route

from ingress.anthropic.batches import register_message_batch_routes
from ingress.anthropic.routes import MessagesDoor, anthropic_errors
from ingress.tracing import traced_route

if TYPE_CHECKING:  # ingress.app calls this; importing it back would be a circle
    from ingress.app import Ingress


def register_anthropic_routes(app: FastAPI, ingress: Ingress) -> None:
    """Add the Anthropic routes. `POST /v1/messages` joins the hot routes (served past the
    middleware by `ingress.hot_routes`); the others are plain routes at the table's end,
    after every OpenAI route."""
    door = MessagesDoor(ingress)
    # In a server span like the OpenAI hot routes (ingress/tracing.py).
    messages = traced_route("/v1/messages", anthropic_errors(door.messages))
    app.state.hot_routes["/v1/messages"] = messages
    app.router.routes.extend([
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", anthropic_errors(door.count_tokens),
              methods=["POST"]),
    ])
    register_message_batch_routes(app, door)
