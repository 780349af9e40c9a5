"""sluicegate's unified form (OpenAI chat completions) as Anthropic's Messages API, and back.
Pure translation: no I/O.

`to_anthropic_request` builds the body of `POST /v1/messages`; it raises
`UnsupportedParameter` (before any call) for a request Anthropic cannot express, so the
worker can try the request's next deployment instead of sending something that means less.
The way back (`from_anthropic_message`, `AnthropicStreamTranslator`) is in
`anthropic_answers`; the conversation (roles, content parts, tool calls and results) in
`anthropic_messages`. Every OpenAI parameter, and what becomes of it:

| OpenAI parameter                     | Anthropic                                               |
|--------------------------------------|---------------------------------------------------------|
| `model`                              | the deployment's upstream `model`                       |
| `messages`                           | `system` + alternating `messages` (`anthropic_messages`) |
| `max_completion_tokens`/`max_tokens` | `max_tokens`; Anthropic requires it, so without them    |
|                                      | the deployment's `max_output_tokens`, else 4096         |
| `temperature`                        | `temperature`; above 1 (Anthropic's maximum) refused    |
| `top_p`; `stop` (string or list)     | `top_p`; `stop_sequences`                               |
| `tools` (functions)                  | `tools`: `name`, `description`, `input_schema` (the     |
|                                      | `parameters`), `cache_control` of the tool or function  |
| `tools[].function.strict`            | dropped: not every Claude model takes `strict`; the     |
|                                      | schema still shapes the call, without the guarantee     |
| `tool_choice` auto/none/required/fn  | `tool_choice` auto/none/any/`{type: tool, name}`        |
| `parallel_tool_calls: false`         | `tool_choice.disable_parallel_tool_use: true`           |
| `response_format` json_object,       | a tool `sluicegate_json_answer` whose input schema is   |
| json_schema                          | the answer's, forced (or, beside the client's tools     |
|                                      | under `auto`, `tool_choice: any`); its input comes back |
|                                      | as `content` with `finish_reason: stop`                 |
| `reasoning_effort`                   | `thinking` (minimal and low 1024, medium 4096, high     |
|                                      | 16384 budget tokens: `schemas.anthropic`'s table, which |
|                                      | our Anthropic door reads the other way; `max_tokens`    |
|                                      | gets the budget added when it would not exceed it);     |
|                                      | `none`: no thinking                                     |
| `user`, `safety_identifier`          | `metadata.user_id`                                      |
| `top_k`, `thinking`, `metadata`,     | passed through (Anthropic's own; `metadata` only with   |
| `output_config`                      | `user_id`, other keys refused)                          |
| `stream`, `stream_options`           | set by the adapter; usage is always reported            |
| `seed`                               | dropped: best effort at OpenAI too, determinism is      |
|                                      | never promised                                          |
| `prediction`                         | dropped: it only makes OpenAI faster, never different   |
| `prompt_cache_key`                   | dropped: a hint for OpenAI's cache routing; Anthropic   |
|                                      | caches what `cache_control` marks                       |
| `service_tier`                       | `auto`/`default` dropped (ordinary processing); others  |
|                                      | refused                                                 |
| `store`, `modalities`                | `false`, `["text"]` dropped; anything else refused      |
| `n` > 1, `logprobs`, `top_logprobs`, | refused (UnsupportedParameter naming it): no            |
| `logit_bias`, non-zero               | equivalent, and leaving them out would change the       |
| `presence_penalty`/`frequency_penalty` | answer or what the client gets back                   |
| `functions`, `function_call`         | refused: legacy; use `tools`                            |
| a message's `name`                   | refused (Anthropic has no participants)                 |
| any other parameter                  | refused, naming it                                      |

A parameter named in the deployment's `drop_params` is treated as never sent (`name` drops
messages' participant names), so an operator can accept what this table refuses.
Beside extended thinking Anthropic refuses `temperature` other than 1, `top_k`, `top_p`
below 0.95 and forced tool use; those are refused here too, naming the parameter.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

from broker.errors import UnsupportedParameter
from schemas import ChatCompletionRequest
from schemas.anthropic import THINKING_BUDGETS
from schemas.chat import ResponseFormat, Tool
from workers.providers.anthropic_answers import (
    ANSWER_TOOL,
    AnthropicStreamTranslator,
    from_anthropic_message,
)
from workers.providers.anthropic_messages import to_anthropic_conversation

__all__ = [
    "ANSWER_TOOL",
    "DEFAULT_MAX_TOKENS",
    "AnthropicStreamTranslator",
    "from_anthropic_message",
    "to_anthropic_request",
]

DEFAULT_MAX_TOKENS: Final = 4096
"""`max_tokens` for a request without a limit on a deployment without `max_output_tokens`."""

_TRANSLATED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort",
    "user", "safety_identifier", "top_k", "thinking", "metadata", "output_config"})
_DROPPED = frozenset({"seed", "prediction", "prompt_cache_key", "stream", "stream_options"})
# Values that ask for nothing beyond what Anthropic does anyway.
_NEUTRAL: Final[dict[str, Collection[Any]]] = {
    "n": (1,), "logprobs": (False,), "top_logprobs": (0,), "logit_bias": ({},),
    "presence_penalty": (0,), "frequency_penalty": (0,), "store": (False,),
    "service_tier": ("auto", "default"), "modalities": (["text"],)}


def to_anthropic_request(
    body: ChatCompletionRequest, *, model: str, default_max_tokens: int, deployment: str,
    drop_params: Collection[str] = (),
) -> dict[str, Any]:
    """The body of `POST /v1/messages` asking what `body` asks (see the module's table).

    Args:
        body: The request in sluicegate's unified form.
        model: The deployment's upstream model.
        default_max_tokens: `max_tokens` when `body` sets no output limit (Anthropic requires
            one): the deployment's `max_output_tokens`, else `DEFAULT_MAX_TOKENS`.
        deployment: Named in errors.
        drop_params: Parameters to treat as never sent (the deployment's `drop_params`).

    Raises:
        UnsupportedParameter: `body` asks for something Anthropic cannot express; `param`
            names it.
    """
    dropped = frozenset(drop_params)
    sent = {name: getattr(body, name) for name in body.model_fields_set}
    params = {name: value for name, value in {**sent, **(body.model_extra or {})}.items()
              if value is not None and name not in dropped}
    _refuse_inexpressible(params, deployment)
    system, messages = to_anthropic_conversation(
        body.messages, deployment=deployment, drop_names="name" in dropped)
    request: dict[str, Any] = {
        "model": model, "messages": messages,
        "max_tokens": (params.get("max_completion_tokens") or params.get("max_tokens")
                       or default_max_tokens)}
    if system is not None:
        request["system"] = system
    _add_sampling(params, request, deployment)
    _add_tools(params, request, deployment)
    _add_thinking(params, request, deployment)
    _add_metadata(params, request, deployment)
    if "output_config" in params:  # Anthropic's own (effort, structured output)
        request["output_config"] = params["output_config"]
    return request


def _unsupported(param: str, why: str, deployment: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"{param}: {why}", param=param, deployment=deployment)


def _refuse_inexpressible(params: dict[str, Any], deployment: str) -> None:
    for name, value in params.items():
        if name in _TRANSLATED or name in _DROPPED:
            continue
        if name in _NEUTRAL and value in _NEUTRAL[name]:
            continue
        raise _unsupported(name, "Anthropic's Messages API has no equivalent", deployment)


def _add_sampling(params: dict[str, Any], request: dict[str, Any], deployment: str) -> None:
    temperature = params.get("temperature")
    if isinstance(temperature, int | float) and temperature > 1:
        raise _unsupported("temperature", f"{temperature} is above Anthropic's maximum of 1 "
                           "(OpenAI's range is 0 to 2, Anthropic's 0 to 1)", deployment)
    for name in ("temperature", "top_p", "top_k"):
        if name in params:
            request[name] = params[name]
    stop = params.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)


def _add_tools(params: dict[str, Any], request: dict[str, Any], deployment: str) -> None:
    tools = [_tool(tool, deployment) for tool in params.get("tools") or ()]
    if any(tool["name"] == ANSWER_TOOL for tool in tools):
        raise _unsupported("tools", f"'{ANSWER_TOOL}' is reserved by sluicegate", deployment)
    choice = _tool_choice(params["tool_choice"], deployment) if (
        tools and "tool_choice" in params) else None
    answer = _answer_tool(params.get("response_format"), deployment)
    # With a tool call required anyway there is no answer for the format to shape.
    if answer is not None and (choice is None or choice["type"] in ("auto", "none")):
        forced = not tools or (choice is not None and choice["type"] == "none")
        tools.append(answer)
        # `any` beside the client's tools: answering is then one more tool to call.
        choice = {"type": "tool", "name": ANSWER_TOOL} if forced else {"type": "any"}
    if not tools:
        return
    if params.get("parallel_tool_calls") is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    request["tools"] = tools
    if choice is not None:
        request["tool_choice"] = choice


def _tool(tool: Tool, deployment: str) -> dict[str, Any]:
    function = tool.function
    if tool.type != "function" or function is None:
        raise _unsupported("tools", f"Anthropic takes function tools only, not '{tool.type}'",
                           deployment)
    result: dict[str, Any] = {
        "name": function.name,
        "input_schema": function.parameters or {"type": "object", "properties": {}}}
    if function.description:
        result["description"] = function.description
    cache_control = ((tool.model_extra or {}).get("cache_control")
                     or (function.model_extra or {}).get("cache_control"))
    if cache_control is not None:
        result["cache_control"] = cache_control
    return result


def _tool_choice(choice: Any, deployment: str) -> dict[str, Any]:
    simple = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise _unsupported("tool_choice", f"{choice!r} has no Anthropic equivalent", deployment)


def _answer_tool(response_format: ResponseFormat | None,
                 deployment: str) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    description = "Give your final answer by calling this tool with the answer as its input."
    if response_format.type == "json_object":
        return {"name": ANSWER_TOOL, "description": description,
                "input_schema": {"type": "object"}}
    if response_format.type == "json_schema":
        spec = response_format.json_schema or {}
        if spec.get("description"):
            description += f" The answer: {spec['description']}"
        return {"name": ANSWER_TOOL, "description": description,
                "input_schema": spec.get("schema") or {"type": "object"}}
    raise _unsupported("response_format", f"'{response_format.type}' has no Anthropic "
                       "equivalent", deployment)


def _add_thinking(params: dict[str, Any], request: dict[str, Any], deployment: str) -> None:
    thinking = params.get("thinking")  # Anthropic's own, sent as it is: it wins
    effort = params.get("reasoning_effort")
    if thinking is None and effort is not None and effort != "none":
        if effort not in THINKING_BUDGETS:
            raise _unsupported("reasoning_effort", f"{effort!r} has no Anthropic thinking "
                               "budget", deployment)
        thinking = {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}
    if thinking is None:
        return
    request["thinking"] = thinking
    if not isinstance(thinking, dict) or thinking.get("type") == "disabled":
        return
    budget = thinking.get("budget_tokens")
    if isinstance(budget, int) and request["max_tokens"] <= budget:
        # Anthropic counts thinking inside max_tokens and needs room beyond it.
        request["max_tokens"] += budget
    if request.get("temperature", 1) != 1:
        raise _unsupported("temperature", "Anthropic takes no temperature but 1 with "
                           "extended thinking", deployment)
    if "top_k" in request:
        raise _unsupported("top_k", "Anthropic takes no top_k with extended thinking",
                           deployment)
    if request.get("top_p", 1) < 0.95:
        raise _unsupported("top_p", "Anthropic takes no top_p below 0.95 with extended "
                           "thinking", deployment)
    choice = request.get("tool_choice") or {}
    if choice.get("type") in ("any", "tool"):
        param = ("response_format" if any(tool["name"] == ANSWER_TOOL
                                          for tool in request["tools"]) else "tool_choice")
        raise _unsupported(param, "Anthropic cannot force a tool call with extended "
                           "thinking", deployment)


def _add_metadata(params: dict[str, Any], request: dict[str, Any], deployment: str) -> None:
    metadata = params.get("metadata", {})
    if not isinstance(metadata, dict) or set(metadata) - {"user_id"}:
        raise _unsupported("metadata", "Anthropic's metadata holds only user_id", deployment)
    user_id = metadata.get("user_id") or params.get("user") or params.get("safety_identifier")
    if user_id:
        request["metadata"] = {"user_id": user_id}
