"""Naming the field a validation error is about, as OpenAI's `param` does."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

# pydantic's tags for union members that are plain types; model members are tagged with
# their class name, which is not a field name either (checked by `_is_field`).
_PLAIN_MEMBERS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal"})


def most_specific_error(error: ValidationError) -> ErrorDetails:
    """Of the first field's problems, the deepest one.

    A value checked against a union (a message's content: a string or a list of parts)
    fails once per member; the member that got furthest names the real problem
    (`messages[0].content[1].image_url`), not the first member tried (`...content`).
    """
    details = error.errors(include_url=False)
    first = details[0]
    same_field = [detail for detail in details if detail["loc"][:1] == first["loc"][:1]]
    return max(same_field, key=lambda detail: len(detail["loc"]))


def dotted_param(location: Sequence[int | str]) -> str | None:
    """`messages[0].content[1]` from pydantic's `('messages', 0, 'content', 'list[...]', 1)`."""
    param = ""
    for part in location:
        if isinstance(part, int):
            param += f"[{part}]"
        elif not part.isidentifier() or part in _PLAIN_MEMBERS or part[:1].isupper():
            continue  # a union member's tag (`str`, `list[ContentPart]`), not a field
        else:
            param += f".{part}" if param else part
    return param or None
