"""Reading and validating request bodies, with errors that name the offending field."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from broker.errors import InvalidRequest, PayloadTooLarge

ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refusing anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(len(body), limit)
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def validate_body(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """Validate `data`, turning the first problem into an `InvalidRequest` naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _dotted(first["loc"])
        if first["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        elif first["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: '{param}'."
        else:
            message = f"Invalid value for '{param}': {first['msg']}."
        if exc.error_count() > 1:
            message += f" ({exc.error_count() - 1} more problems)"
        raise InvalidRequest(message, param=param) from exc


def _dotted(location: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in location:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in {"str", "list[TextPart]", "literal[False]", "literal[1]"} or "[" in part:
            continue  # union branch names from pydantic, not field names
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts)
