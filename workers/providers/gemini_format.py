"""Chat completions requests as Gemini `generateContent` requests (pure: no I/O).

Every parameter of sluicegate's unified (OpenAI) form is translated, dropped or refused;
refusing raises `UnsupportedParameter` naming it before any call, and the worker then tries
the request's next deployment. An operator can list a refused parameter in the deployment's
`drop_params` to have it dropped instead. The answers go back in `gemini_answers.py`.

| OpenAI parameter | Gemini | Decision |
|---|---|---|
| `messages`: system, developer | `systemInstruction.parts` (1) | translated |
| `messages`: user | `contents`, role `user` | translated |
| `messages`: assistant | `contents`, role `model` | translated |
| assistant `reasoning_content` | — | dropped |
| assistant `tool_calls`, `function_call` | `functionCall` parts `{name, args}` (2) | translated |
| `messages`: tool, function | `functionResponse` parts `{name, response}` (3) | translated |
| message `name` | — | dropped (no speaker names) |
| content parts `text`, `refusal` | `text` parts | translated |
| `image_url`, a base64 `data:` URL | `inlineData {mimeType, data}` | translated |
| `image_url`, an `http(s)://` or `gs://` URL | `fileData {fileUri, mimeType}` (4) | translated |
| `image_url.detail` | — | dropped |
| `input_audio` | `inlineData`, `audio/<format>` | translated |
| `file` with `file_data` (a data URL) | `inlineData` | translated |
| `file` with `file_id`; other part types | — | refused |
| `tools` (type `function`), `functions` | `tools[0].functionDeclarations[]` (5) | translated |
| `tools` of another type (`custom`, ...) | — | refused |
| `tool_choice`: `auto`, `none`, `required` | `toolConfig` mode `AUTO`, `NONE`, `ANY` | translated |
| `tool_choice` naming one function | mode `ANY`, `allowedFunctionNames: [name]` | translated |
| `tool_choice`: `allowed_tools` | — | refused |
| `parallel_tool_calls: true` | — | dropped (Gemini's way) |
| `parallel_tool_calls: false` | — | refused (6) |
| `temperature`, `seed` | `generationConfig.temperature`, `.seed` | translated |
| `top_p`, `top_k` (not OpenAI's) | `topP`, `topK` | translated |
| `max_completion_tokens`, `max_tokens` | `maxOutputTokens` (7) | translated |
| `stop` | `stopSequences` | translated |
| `n` | `candidateCount` | translated |
| `presence_penalty`, `frequency_penalty` | `presencePenalty`, `frequencyPenalty` | translated |
| `response_format`: `text` | — | dropped (the default) |
| `response_format`: `json_object` | `responseMimeType: application/json` | translated |
| `response_format`: `json_schema` | `responseMimeType`, `responseJsonSchema` (8) | translated |
| `logprobs`, `top_logprobs` | `responseLogprobs`, `logprobs` | translated |
| `reasoning_effort` | `thinkingConfig` (9) | translated |
| `logit_bias` (not empty) | — | refused |
| `audio`, `modalities` with `audio` | — | refused |
| `modalities: ["text"]`, `logit_bias: {}` | — | dropped |
| `stream`, `stream_options` | `:streamGenerateContent?alt=sse` | translated (10) |
| `user`, `store`, `metadata`, `service_tier` | — | dropped (11) |
| `prediction`, `prompt_cache_key`, `safety_identifier`, `verbosity` | — | dropped (11) |
| any other (`web_search_options`, ...) | — | refused |

1. All system and developer messages, in order, wherever they stand in the conversation.
2. `args` is the parsed `arguments` (refused unless a JSON object). A call's
   `extra_content.google.thought_signature` (as `gemini_answers.py` answers it, Google's
   own OpenAI-compatible form) goes back as the part's `thoughtSignature`, which Gemini 3
   needs to go on with function calling.
3. `name` is the function of the earlier call with that `tool_call_id` (refused when there
   is none); `response` is the content parsed as a JSON object, else `{"content": ...}`.
   Consecutive answers go in one `user` turn, as Gemini wants.
4. The media type is guessed from the URL's file extension; without one the part is
   refused (send a `data:` URL instead).
5. `{name, description, parameters}`: parameters within Gemini's OpenAPI subset
   (`gemini_schema.py`); an object without properties is left out (Gemini refuses it);
   `strict` is dropped.
6. Gemini may answer several calls at once and cannot be told not to.
7. Absent both, the deployment's `max_output_tokens`, if set (what the budget held).
8. `json_schema.schema` as Gemini's JSON Schema field (`$defs`, `$ref`, `anyOf` kept);
   `strict` is dropped.
9. `thinkingBudget`: `none` 0, `minimal` 512, `low` 1024, `medium` 8192, `high` and
   `xhigh` 24576 (the most every 2.5 model takes), with `includeThoughts` unless `none`;
   another value is refused.
10. The adapter picks the method; usage is always reported.
11. No Gemini equivalent, and none changes what is asked or billed.
"""

from __future__ import annotations

import mimetypes
from typing import Any

import orjson

from broker.config import DeploymentConfig
from broker.errors import UnsupportedParameter
from schemas import ChatCompletionRequest
from workers.providers.gemini_answers import GeminiStreamTranslator, from_gemini_response
from workers.providers.gemini_schema import gemini_schema

__all__ = ["GeminiStreamTranslator", "from_gemini_response", "to_gemini_request"]

THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576,
                    "xhigh": 24576}
"""`reasoning_effort` as Gemini's `thinkingBudget` (tokens)."""
_GENERATION_FIELDS = {"temperature": "temperature", "top_p": "topP", "top_k": "topK",
                      "seed": "seed", "n": "candidateCount",
                      "presence_penalty": "presencePenalty",
                      "frequency_penalty": "frequencyPenalty"}
_READ_OR_DROPPED = frozenset({"model", "stream", "stream_options", "user", "store", "metadata",
                              "service_tier", "prediction", "prompt_cache_key",
                              "safety_identifier", "verbosity", "max_tokens",
                              "max_completion_tokens", "stop", "response_format", "logprobs",
                              "top_logprobs", "reasoning_effort", "messages", "tools",
                              "functions", "tool_choice", "function_call",
                              # Refused in `_refuse_inexpressible` for some values only.
                              "logit_bias", "parallel_tool_calls", "modalities"})
"""Parameters read by name below, or dropped; any other (but `_GENERATION_FIELDS`) is
refused."""
_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                ".webp": "image/webp", ".gif": "image/gif", ".heic": "image/heic",
                ".heif": "image/heif", ".pdf": "application/pdf"}
"""Gemini's common media types by file extension (`mimetypes` varies between machines)."""
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def to_gemini_request(body: ChatCompletionRequest, *, deployment: DeploymentConfig,
                      name: str = "") -> dict[str, Any]:
    """The `generateContent` body asking what `body` asks, for `deployment`.

    Args:
        body: The request in sluicegate's unified (OpenAI) form.
        deployment: Its configuration (`max_output_tokens`, `drop_params`,
            `allowed_params`).
        name: The deployment's name, for error messages.

    Raises:
        UnsupportedParameter: Gemini cannot express a parameter; `param` names it.
    """
    # A parameter the client set to null asks for the default: Gemini's, by leaving it out.
    params = {key: value for key, value in body.model_dump(mode="json").items()
              if value is not None}
    for dropped in deployment.drop_params:
        params.pop(dropped, None)
    if deployment.allowed_params is not None:
        allowed = {"model", "messages", *deployment.allowed_params}
        params = {key: value for key, value in params.items() if key in allowed}
    try:
        return _translate(params, deployment)
    except UnsupportedParameter as exc:
        exc.deployment = name
        raise


def _translate(params: dict[str, Any], deployment: DeploymentConfig) -> dict[str, Any]:
    _refuse_inexpressible(params)
    system, contents = _contents(params["messages"])
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    declarations = _declarations(params)
    if declarations:
        request["tools"] = [{"functionDeclarations": declarations}]
    choice = params.get("tool_choice", params.get("function_call"))
    if choice is not None:
        request["toolConfig"] = {"functionCallingConfig": _calling_config(choice)}
    generation = _generation_config(params, deployment)
    if generation:
        request["generationConfig"] = generation
    return request


def _refuse(param: str, why: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"Gemini cannot express '{param}': {why}", param=param)


def _refuse_inexpressible(params: dict[str, Any]) -> None:
    if params.get("logit_bias"):
        raise _refuse("logit_bias", "it has no token biases")
    if params.get("parallel_tool_calls") is False:
        raise _refuse("parallel_tool_calls", "it cannot be limited to one tool call a turn")
    if "audio" in (params.get("modalities") or ()) or "audio" in params:
        raise _refuse("modalities" if "audio" not in params else "audio",
                      "sluicegate does not translate audio answers")
    for key in params:
        if key not in _READ_OR_DROPPED and key not in _GENERATION_FIELDS:
            raise _refuse(key, "sluicegate's Gemini adapter does not translate it")


# --- messages ---------------------------------------------------------------------------


def _contents(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                       list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(_parts(message.get("content"), where, text_only=True))
        elif role == "user":
            _append(contents, "user", _parts(message.get("content"), where))
        elif role == "assistant":
            _append(contents, "model", _assistant_parts(message, where, call_names))
        else:  # tool or function: the answer to an earlier call
            function = (message.get("name") if role == "function"
                        else call_names.get(str(message.get("tool_call_id"))))
            if not function:
                raise _refuse(f"{where}.tool_call_id",
                              "it answers no tool call of an earlier assistant message")
            response = {"functionResponse": {"name": function,
                                             "response": _tool_result(message.get("content"))}}
            if contents and contents[-1]["role"] == "user" and all(
                    "functionResponse" in part for part in contents[-1]["parts"]):
                contents[-1]["parts"].append(response)  # one turn answers every call
            else:
                contents.append({"role": "user", "parts": [response]})
    return system, contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if parts:  # Gemini refuses a turn without parts
        contents.append({"role": role, "parts": parts})


def _parts(content: Any, where: str, *, text_only: bool = False) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for number, part in enumerate(content):
        place = f"{where}.content[{number}]"
        kind = part.get("type")
        if kind in ("text", "refusal"):
            if part.get(kind):
                parts.append({"text": part[kind]})
        elif text_only:
            raise _refuse(place, f"a system message can hold only text, not '{kind}'")
        else:
            parts.append(_media_part(part, kind, place))
    return parts


def _media_part(part: dict[str, Any], kind: str, place: str) -> dict[str, Any]:
    if kind == "image_url":
        return _url_part(part["image_url"]["url"], f"{place}.image_url")
    if kind == "input_audio":
        audio = part["input_audio"]
        return {"inlineData": {"mimeType": f"audio/{audio['format']}", "data": audio["data"]}}
    if kind == "file" and isinstance(part.get("file", {}).get("file_data"), str):
        return _url_part(part["file"]["file_data"], f"{place}.file")
    raise _refuse(place, f"content parts of type '{kind}' have no Gemini form here")


def _url_part(url: str, place: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        mime, _, encoding = header.partition(";")
        if encoding != "base64" or not mime:
            raise _refuse(place, "only base64 data URLs with a media type can be sent inline")
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("https://", "http://", "gs://")):
        path = url.split("?", 1)[0]
        extension = path[path.rfind("."):].lower() if "." in path.rsplit("/", 1)[-1] else ""
        guessed = _MEDIA_TYPES.get(extension) or mimetypes.guess_type(path)[0]
        if guessed is None:
            raise _refuse(place, "Gemini needs the file's media type, and the URL's "
                                 "extension does not say it; send a data: URL instead")
        return {"fileData": {"fileUri": url, "mimeType": guessed}}
    raise _refuse(place, "only data:, http(s):// and gs:// URLs can be sent")


def _assistant_parts(message: dict[str, Any], where: str,
                     call_names: dict[str, str]) -> list[dict[str, Any]]:
    parts = _parts(message.get("content"), where)
    calls = list(message.get("tool_calls") or ())
    if message.get("function_call"):
        calls.append({"function": message["function_call"]})
    for number, call in enumerate(calls):
        function = call.get("function") or {}
        place = f"{where}.tool_calls[{number}].function"
        try:
            args = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict) or not function.get("name"):
            raise _refuse(place, "a Gemini function call needs a name and a JSON object of "
                                 "arguments")
        if call.get("id"):
            call_names[call["id"]] = function["name"]
        part: dict[str, Any] = {"functionCall": {"name": function["name"], "args": args}}
        signature = ((call.get("extra_content") or {}).get("google") or {}).get(
            "thought_signature")
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _tool_result(content: Any) -> dict[str, Any]:
    if isinstance(content, list):
        content = "".join(part.get("text") or "" for part in content)
    try:
        value = orjson.loads(content) if isinstance(content, str) else content
    except orjson.JSONDecodeError:
        value = content
    return value if isinstance(value, dict) else {"content": value}


# --- tools and generation -----------------------------------------------------------------


def _declarations(params: dict[str, Any]) -> list[dict[str, Any]]:
    functions: list[tuple[str, dict[str, Any]]] = []
    for number, tool in enumerate(params.get("tools") or ()):
        if tool.get("type", "function") != "function" or not tool.get("function"):
            raise _refuse(f"tools[{number}]", f"tools of type '{tool.get('type')}' have no "
                                              "Gemini form")
        functions.append((f"tools[{number}].function", tool["function"]))
    functions += [(f"functions[{number}]", function)
                  for number, function in enumerate(params.get("functions") or ())]
    declarations = []
    for place, function in functions:
        declaration = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        parameters = gemini_schema(function.get("parameters") or {},
                                   param=f"{place}.parameters")
        if parameters.get("properties"):  # Gemini refuses an object without properties
            declaration["parameters"] = parameters
        declarations.append(declaration)
    return declarations


def _calling_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name") or choice.get("name")
        if named and choice.get("type", "function") == "function":
            return {"mode": "ANY", "allowedFunctionNames": [named]}
    raise _refuse("tool_choice", "only auto, none, required or one named function")


def _generation_config(params: dict[str, Any], deployment: DeploymentConfig) -> dict[str, Any]:
    config = {gemini: params[openai] for openai, gemini in _GENERATION_FIELDS.items()
              if openai in params}
    limit = (params.get("max_completion_tokens") or params.get("max_tokens")
             or deployment.max_output_tokens)
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = params.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    config.update(_response_format(params.get("response_format")))
    if params.get("logprobs"):
        config["responseLogprobs"] = True
    if params.get("top_logprobs") is not None:
        config["responseLogprobs"] = True
        config["logprobs"] = params["top_logprobs"]
    effort = params.get("reasoning_effort")
    if effort is not None:
        if effort not in THINKING_BUDGETS:
            raise _refuse("reasoning_effort", f"no thinking budget for '{effort}'")
        budget = THINKING_BUDGETS[effort]
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
    return config


def _response_format(response_format: dict[str, Any] | None) -> dict[str, Any]:
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    schema = ((response_format or {}).get("json_schema") or {}).get("schema")
    if kind == "json_schema" and isinstance(schema, dict):
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise _refuse("response_format", f"'{kind}' without a schema has no Gemini form")
