"""The little HTTP plumbing the simulator needs, on bare ASGI (no framework on a hot path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson
from pydantic import ValidationError

# The ASGI spec's types as httpx and Starlette spell them, so the app type-checks with both.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
# Names pydantic adds to an error's location for the member of a union it tried.
_UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal"})


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


def _param(location: Sequence[int | str]) -> str | None:
    """`messages[0].role` from pydantic's `('messages', 0, 'role')`."""
    param = ""
    for part in location:
        if isinstance(part, int):
            param += f"[{part}]"
        elif not part.isidentifier() or part in _UNION_MEMBERS:
            break  # a union member's tag, not a field
        else:
            param += f".{part}" if param else part
    return param or None


def describe_invalid(error: ValidationError) -> tuple[str, str | None]:
    """A client-facing message and the offending field of an invalid request body."""
    first = error.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return (
            "We could not parse the JSON body of your request. The body must be a JSON "
            "object (Content-Type: application/json).",
            None,
        )
    param = _param(first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if param is None:
        return f"Invalid request body: {message}", None
    return f"Invalid value for '{param}': {message}", param
