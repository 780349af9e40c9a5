"""Tool parameter schemas cut down to Gemini's OpenAPI subset."""

from __future__ import annotations

from workers.providers.gemini_schema import gemini_schema


def test_all_of_members_keep_every_property_and_required_name() -> None:
    schema = {
        "type": "object",
        "properties": {"id": {"type": "string"}},
        "required": ["id"],
        "allOf": [
            {"properties": {"city": {"type": "string"}}, "required": ["city"]},
            {"properties": {"days": {"type": "integer"}}, "required": ["days", "city"]},
        ],
        "additionalProperties": False,
    }
    translated = gemini_schema(schema, param="tools[0].function.parameters")
    assert set(translated["properties"]) == {"id", "city", "days"}
    assert translated["required"] == ["id", "city", "days"]
    assert "additionalProperties" not in translated
