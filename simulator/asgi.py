"""The little HTTP plumbing the simulator needs, on bare ASGI (no framework on a hot path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.validation import dotted_param, most_specific_error

# The ASGI spec's types as httpx and Starlette spell them, so the app type-checks with both.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
# Names pydantic adds to an error's location for the member of a union it tried.
async def read_body(receive: Receive) -> bytes:
    """The whole request body (the simulator's bodies are small)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send a complete JSON response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_body(
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> bytes:
    """OpenAI's error envelope, which clients and SDKs parse."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def describe_invalid(error: ValidationError) -> tuple[str, str | None]:
    """A client-facing message and the offending field of an invalid request body."""
    first = most_specific_error(error)
    if first["type"] == "json_invalid":
        return (
            "We could not parse the JSON body of your request. The body must be a JSON "
            "object (Content-Type: application/json).",
            None,
        )
    param = dotted_param(first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if param is None:
        return f"Invalid request body: {message}", None
    return f"Invalid value for '{param}': {message}", param
