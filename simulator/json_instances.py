"""A deterministic JSON value that validates against a JSON schema, for simulated answers.

Covers what function parameters and structured outputs use: objects (required and, for
strict schemas, every property), arrays, strings (with `enum`/`const`), numbers,
integers, booleans, null, `anyOf`/`oneOf` (the first branch), and local `$ref`s into
`$defs`/`definitions` (as pydantic writes them).
"""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 8


def instance_of(schema: Any, *, words: tuple[str, ...] = ("sample",)) -> Any:
    """A value valid against `schema` (a dict), built the same way every time."""
    root = schema if isinstance(schema, dict) else {}
    return _build(root, root, words, 0)


def _build(schema: dict[str, Any], root: dict[str, Any], words: tuple[str, ...],
           depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return None
    if "$ref" in schema:
        return _build(_resolve(schema["$ref"], root), root, words, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(combinator)
        if branches:
            return _build(branches[0], root, words, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties: dict[str, Any] = schema.get("properties", {})
        return {name: _build(sub, root, words, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        items = schema.get("items", {})
        count = max(1, int(schema.get("minItems", 1)))
        return [_build(items if isinstance(items, dict) else {}, root, words, depth + 1)
                for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return " ".join(words[: max(1, int(schema.get("minLength", 1)))])


def _resolve(reference: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in reference.removeprefix("#/").split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}
