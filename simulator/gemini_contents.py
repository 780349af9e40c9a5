"""Gemini `generateContent` requests, checked and read into the brain's form.

Field names are Gemini's JSON (lowerCamelCase); the proto names (snake_case) are
accepted too, as Google's JSON mapping does. `systemInstruction`, `tools`
(`functionDeclarations`), `toolConfig` and `generationConfig` (`maxOutputTokens`,
`candidateCount`, `stopSequences`, `responseMimeType` with `responseSchema` or
`responseJsonSchema`) shape the answer; the rest is accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from schemas import ChatCompletionRequest


class _Gemini(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, alias_generator=to_camel,
                              populate_by_name=True)


class Part(_Gemini):
    """One part of a content: text, a function call or response, inline data, …"""

    text: str | None = None
    function_call: dict[str, Any] | None = None
    function_response: dict[str, Any] | None = None
    inline_data: dict[str, Any] | None = None


class Content(_Gemini):
    """A turn: `user` or `model` (a function's answer comes as `user` or `function`)."""

    role: str | None = None
    parts: Annotated[list[Part], Field(min_length=1)]


class FunctionDeclaration(_Gemini):
    """A function the model may call, its parameters as an OpenAPI or a JSON schema."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    parameters_json_schema: dict[str, Any] | None = None


class GeminiTool(_Gemini):
    """A tool; only function declarations are read (search and code execution are not)."""

    function_declarations: list[FunctionDeclaration] | None = None


class GenerationConfig(_Gemini):
    """The parts of `generationConfig` that change the answer."""

    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    candidate_count: Annotated[int, Field(ge=1, le=8)] | None = None
    stop_sequences: Annotated[list[str], Field(max_length=5)] | None = None
    response_mime_type: str | None = None
    response_schema: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None


class GenerateContentRequest(_Gemini):
    """Body of `models/{model}:generateContent` (and of `:countTokens`' `contents`)."""

    contents: Annotated[list[Content], Field(min_length=1)]
    system_instruction: Content | None = None
    tools: list[GeminiTool] | None = None
    tool_config: dict[str, Any] | None = None
    generation_config: GenerationConfig | None = None


class EmbedRequest(_Gemini):
    """Body of `:embedContent`, and each entry of `:batchEmbedContents`."""

    content: Content
    output_dimensionality: Annotated[int, Field(ge=1)] | None = None


class BatchEmbedRequest(_Gemini):
    """Body of `:batchEmbedContents`."""

    requests: Annotated[list[EmbedRequest], Field(min_length=1)]


def to_chat_request(body: GenerateContentRequest, model: str) -> ChatCompletionRequest:
    """The same conversation in OpenAI's form, for the brain and the token count."""
    messages: list[dict[str, Any]] = []
    if body.system_instruction is not None:
        messages.append({"role": "system", "content": _text(body.system_instruction)})
    for content in body.contents:
        messages += _turn(content)
    data: dict[str, Any] = {"model": model, "messages": messages}
    declarations = [declaration for tool in body.tools or ()
                    for declaration in tool.function_declarations or ()]
    if declarations:
        data["tools"] = [{"type": "function", "function": {
            "name": declaration.name, "description": declaration.description,
            "parameters": declaration.parameters_json_schema
            or _json_schema(declaration.parameters or {"type": "OBJECT"})}}
            for declaration in declarations]
        choice = _tool_choice(body.tool_config)
        if choice is not None:
            data["tool_choice"] = choice
    config = body.generation_config
    if config is not None:
        if config.max_output_tokens is not None:
            data["max_tokens"] = config.max_output_tokens
        if config.candidate_count is not None:
            data["n"] = config.candidate_count
        if config.response_mime_type == "application/json":
            schema = config.response_json_schema or (
                _json_schema(config.response_schema) if config.response_schema else None)
            data["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
                if schema else {"type": "json_object"})
    return ChatCompletionRequest.model_validate(data)


def _turn(content: Content) -> list[dict[str, Any]]:
    calls = [part.function_call for part in content.parts if part.function_call]
    if content.role == "model":
        turn: dict[str, Any] = {"role": "assistant", "content": _text(content) or None}
        if calls:
            turn["tool_calls"] = [{"id": call.get("id") or call.get("name"), "type": "function",
                                   "function": {"name": call.get("name"), "arguments": orjson.dumps(
                                       call.get("args") or {}).decode()}} for call in calls]
        return [turn]
    turns: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": answer.get("id") or answer.get("name"),
         "content": orjson.dumps(answer.get("response") or {}).decode()}
        for part in content.parts if (answer := part.function_response)]
    text = _text(content)
    if text or not turns:
        turns.append({"role": "user", "content": text})
    return turns


def _text(content: Content) -> str:
    return "".join(part.text or "" for part in content.parts)


def _tool_choice(tool_config: dict[str, Any] | None) -> Any:
    config = (tool_config or {}).get("functionCallingConfig") or (tool_config or {}).get(
        "function_calling_config") or {}
    mode = str(config.get("mode", "AUTO")).upper()
    if mode == "NONE":
        return "none"
    if mode in ("ANY", "VALIDATED"):
        allowed = config.get("allowedFunctionNames") or config.get("allowed_function_names")
        if allowed:
            return {"type": "function", "function": {"name": allowed[0]}}
        return "required"
    return None


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Gemini's OpenAPI-style schema (`"type": "OBJECT"`) as JSON Schema (`"object"`)."""
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            converted[key] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            converted[key] = {name: _json_schema(sub) for name, sub in value.items()
                              if isinstance(sub, dict)}
        elif key == "items" and isinstance(value, dict):
            converted[key] = _json_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            converted[key] = [_json_schema(sub) for sub in value if isinstance(sub, dict)]
        else:
            converted[key] = value
    return converted
