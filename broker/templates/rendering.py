"""Rendering templates in Jinja2's sandbox: caller-supplied values, operator-written text.

Template text comes from operators, values from callers; either may try to reach Python
internals (`{{ ''.__class__ }}`). Jinja2's `SandboxedEnvironment` refuses unsafe attribute
access and calls; `StrictUndefined` turns a variable the template uses but nobody gave
into an error naming it, instead of rendering an empty string into the prompt.

Either may also try to make the render enormous (a caller's `n` in `{{ s * n }}`, a loop
over a caller's million-item list): a render stops with `template_too_large` once its
messages pass `max_chars` characters in total (`broker.templates.sandbox`).
"""

from __future__ import annotations

from typing import Any

from jinja2 import Template, TemplateError, UndefinedError, meta

from broker.errors import InvalidRequest
from broker.templates.sandbox import OverLimit, compiled, sandbox
from broker.templates.spec import TemplateSpec, bind_variables

MAX_RENDERED_CHARS = 4 * 1024 * 1024
"""Default limit on a render's messages, in characters: the default of the largest body
ingress accepts (`IngressSettings.max_body_bytes`). A prompt longer than that could never
be sent as a chat request (every character is at least one byte of JSON), so rendering
more only spends memory. The edge passes its own `max_body_bytes`."""


def check_template(spec: TemplateSpec) -> None:
    """Refuse a template whose messages do not parse or use undeclared variables.

    Raises:
        InvalidRequest: naming the message (`messages.N.content`) at fault.
    """
    declared = {variable.name for variable in spec.variables}
    for index, message in enumerate(spec.messages):
        param = f"messages.{index}.content"
        try:
            used = meta.find_undeclared_variables(
                sandbox(MAX_RENDERED_CHARS).parse(message.content))
        except TemplateError as exc:
            raise InvalidRequest(f"Message {index} is no valid template: {exc}",
                                 param=param, code="invalid_template") from exc
        unknown = sorted(used - declared)
        if unknown:
            raise InvalidRequest(f"Message {index} uses the undeclared variable "
                                 f"'{unknown[0]}'.", param=param, code="invalid_template")


def render_messages(spec: TemplateSpec, variables: dict[str, Any], *,
                    max_chars: int = MAX_RENDERED_CHARS) -> list[dict[str, str]]:
    """The template's messages rendered with `variables` (checked and defaulted first).

    Args:
        max_chars: the most characters all messages together may render to.

    Raises:
        InvalidRequest: a variable is undeclared, missing or mistyped, the template
            tried something the sandbox refuses, or rendered past `max_chars`
            (`template_too_large`).
    """
    values = bind_variables(spec, variables)
    budget = max_chars
    rendered = []
    for message in spec.messages:
        try:
            content, budget = _render(compiled(message.content, max_chars), values, budget)
        except OverLimit as exc:
            raise InvalidRequest(f"Template '{spec.name}' is too large to render: {exc} "
                                 f"(the limit is {max_chars:,} characters, the largest "
                                 "request body accepted).", param="variables",
                                 code="template_too_large") from exc
        except UndefinedError as exc:  # e.g. "'name' is undefined": names the variable
            raise InvalidRequest(f"Template '{spec.name}': {exc}.", param="variables",
                                 code="missing_variable") from exc
        except TemplateError as exc:  # SecurityError among them
            raise InvalidRequest(f"Template '{spec.name}' could not render: {exc}",
                                 param="variables", code="template_error") from exc
        except Exception as exc:
            # The template's own code failed on these values (`{{ n + 1 }}` given a
            # string: TypeError): the caller's 400, not our 500.
            raise InvalidRequest(f"Template '{spec.name}' could not render with these "
                                 f"variables: {type(exc).__name__}: {exc}", param="variables",
                                 code="template_error") from exc
        rendered.append({"role": message.role, "content": content})
    return rendered


def _render(template: Template, values: dict[str, Any], budget: int) -> tuple[str, int]:
    """The template's text and the budget left; streamed (`generate`) so that a render
    past `budget` stops there instead of building all of it first.

    Raises:
        OverLimit: the text passed `budget` characters.
    """
    chunks = []
    for chunk in template.generate(values):
        budget -= len(chunk)
        if budget < 0:
            raise OverLimit("its messages render past the limit")
        chunks.append(chunk)
    return "".join(chunks), budget


def render_body(spec: TemplateSpec, variables: dict[str, Any], overrides: dict[str, Any],
                *, max_chars: int = MAX_RENDERED_CHARS) -> dict[str, Any]:
    """The chat completion body: the template's parameters, the caller's `overrides`
    (e.g. `stream`, `temperature`) over them, and the rendered messages.

    Args:
        max_chars: the most characters the messages may render to in total; callers at
            the edge pass the largest body they accept.

    Raises:
        InvalidRequest: as `render_messages`; or the overrides set `messages`.
    """
    if "messages" in overrides:
        raise InvalidRequest("A template call sends variables, not messages.",
                             param="messages")
    return {**spec.parameters, **overrides, "messages": render_messages(spec, variables,
                                                                    max_chars=max_chars)}
