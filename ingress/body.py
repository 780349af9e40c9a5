"""Reading and validating request bodies, with errors that name the offending field."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from broker.errors import InvalidRequest, PayloadTooLarge
from schemas.validation import dotted_param, most_specific_error

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
        first = most_specific_error(exc)
        param = dotted_param(first["loc"]) or "body"
        if first["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        elif first["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: '{param}'."
        else:
            detail = str(first["msg"]).removeprefix("Value error, ")
            message = f"Invalid value for '{param}': {detail}."
        if exc.error_count() > 1:
            message += f" ({exc.error_count() - 1} more problems)"
        raise InvalidRequest(message, param=param) from exc
