"""OpenAI tool parameters (JSON Schema) as Gemini's `Schema`: a subset of OpenAPI 3.0.

Gemini's `functionDeclarations[].parameters` takes only the OpenAPI keys listed in
`_KEPT_KEYS`; an unknown key (`additionalProperties`, `$schema`, `examples`, ...) makes the
whole request fail with 400 INVALID_ARGUMENT. So, translated rather than forwarded:

| JSON Schema                          | Gemini `Schema`                                      |
|--------------------------------------|------------------------------------------------------|
| `$ref` to `#/$defs/X`, `#/definitions/X` | the definition inlined (a recursive one is refused) |
| `"type": ["string", "null"]`         | `"type": "string", "nullable": true`                 |
| `"type": ["string", "integer"]`      | `anyOf` of one schema per type                       |
| `oneOf`                              | `anyOf` (Gemini has no "exactly one")                |
| `allOf`                              | its members merged into one schema                   |
| `const: "x"` (a string)              | `enum: ["x"]`                                        |
| `format` other than (2)              | dropped                                              |
| any other key (1)                    | dropped                                              |

1. `additionalProperties`, `$schema`, `$id`, `examples`, `not`, `if`, `patternProperties`,
   `uniqueItems`, `multipleOf`, `exclusiveMinimum`, and the like.
2. `enum`, `date-time`, `float`, `double`, `int32`, `int64`.

Dropping loosens the schema the model is held to (never tightens it); the caller's own
validation of the arguments still applies.
"""

from __future__ import annotations

from typing import Any

from broker.errors import UnsupportedParameter

_KEPT_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
    "maximum",
})
_KEPT_FORMATS = frozenset({"enum", "date-time", "float", "double", "int32", "int64"})
_REF_PREFIXES = ("#/$defs/", "#/definitions/")


def gemini_schema(schema: dict[str, Any], *, param: str) -> dict[str, Any]:
    """`schema` within Gemini's OpenAPI subset.

    Raises:
        UnsupportedParameter: `schema` refers to itself (Gemini's schemas cannot recurse)
            or to a definition it does not hold; `param` names it.
    """
    definitions = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    return _Translation(definitions, param).schema(schema, ())


class _Translation:
    def __init__(self, definitions: dict[str, Any], param: str):
        self._definitions = definitions
        self._param = param

    def schema(self, node: Any, expanding: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {}
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self._inlined(ref, node, expanding)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "type":
                out.update(self._typed(value))
            elif key == "properties" and isinstance(value, dict):
                out[key] = {name: self.schema(sub, expanding) for name, sub in value.items()}
            elif key == "items":
                out[key] = self.schema(value, expanding)
            elif key in ("anyOf", "oneOf") and isinstance(value, list):
                out["anyOf"] = [self.schema(sub, expanding) for sub in value]
            elif key == "allOf" and isinstance(value, list):
                for sub in value:
                    _merge_all_of(out, self.schema(sub, expanding))
            elif key == "const" and isinstance(value, str):
                out["enum"] = [value]
            elif key == "format":
                if value in _KEPT_FORMATS:
                    out[key] = value
            elif key in _KEPT_KEYS:
                out[key] = value
        return out

    def _inlined(self, ref: str, node: dict[str, Any],
                 expanding: tuple[str, ...]) -> dict[str, Any]:
        name = next((ref[len(prefix):] for prefix in _REF_PREFIXES if ref.startswith(prefix)),
                    None)
        if name is None or name not in self._definitions:
            raise UnsupportedParameter(
                f"{self._param}: Gemini cannot resolve the schema reference '{ref}' "
                "(only '#/$defs/...' and '#/definitions/...' in the same schema)",
                param=self._param)
        if name in expanding:
            raise UnsupportedParameter(
                f"{self._param}: Gemini cannot express the recursive schema '{name}'",
                param=self._param)
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return {**self.schema(self._definitions[name], (*expanding, name)),
                **self.schema(siblings, expanding)}

    @staticmethod
    def _typed(value: Any) -> dict[str, Any]:
        if not isinstance(value, list):
            return {"type": value}
        types = [kind for kind in value if kind != "null"]
        nullable = {"nullable": True} if len(types) < len(value) else {}
        if len(types) == 1:
            return {"type": types[0], **nullable}
        return {"anyOf": [{"type": kind} for kind in types], **nullable}


def _merge_all_of(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Fold one `allOf` member into `into`: every member's properties and required names
    count (a plain update would keep only the last member's)."""
    for key, value in part.items():
        if key == "properties" and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        elif key == "required" and isinstance(into.get(key), list):
            into[key] = [*into[key], *(name for name in value if name not in into[key])]
        else:
            into[key] = value
