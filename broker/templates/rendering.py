"""Rendering templates in Jinja2's sandbox: caller-supplied values, operator-written text.

Template text comes from operators, values from callers; either may try to reach Python
internals (`{{ ''.__class__ }}`). Jinja2's `SandboxedEnvironment` refuses unsafe attribute
access and calls; `StrictUndefined` turns a variable the template uses but nobody gave
into an error naming it, instead of rendering an empty string into the prompt.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment

from broker.errors import InvalidRequest
from broker.templates.spec import TemplateSpec, bind_variables

# One environment for every template: it holds no per-template state. No autoescape: the
# output is a chat prompt, not HTML.
_SANDBOX = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


@lru_cache(maxsize=1024)
def _compiled(source: str) -> Template:
    return _SANDBOX.from_string(source)


def check_template(spec: TemplateSpec) -> None:
    """Refuse a template whose messages do not parse or use undeclared variables.

    Raises:
        InvalidRequest: naming the message (`messages.N.content`) at fault.
    """
    declared = {variable.name for variable in spec.variables}
    for index, message in enumerate(spec.messages):
        param = f"messages.{index}.content"
        try:
            used = meta.find_undeclared_variables(_SANDBOX.parse(message.content))
        except TemplateError as exc:
            raise InvalidRequest(f"Message {index} is no valid template: {exc}",
                                 param=param, code="invalid_template") from exc
        unknown = sorted(used - declared)
        if unknown:
            raise InvalidRequest(f"Message {index} uses the undeclared variable "
                                 f"'{unknown[0]}'.", param=param, code="invalid_template")


def render_messages(spec: TemplateSpec, variables: dict[str, Any]) -> list[dict[str, str]]:
    """The template's messages rendered with `variables` (checked and defaulted first).

    Raises:
        InvalidRequest: a variable is undeclared, missing or mistyped, or the template
            tried something the sandbox refuses.
    """
    values = bind_variables(spec, variables)
    rendered = []
    for message in spec.messages:
        try:
            content = _compiled(message.content).render(values)
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


def render_body(spec: TemplateSpec, variables: dict[str, Any],
                overrides: dict[str, Any]) -> dict[str, Any]:
    """The chat completion body: the template's parameters, the caller's `overrides`
    (e.g. `stream`, `temperature`) over them, and the rendered messages.

    Raises:
        InvalidRequest: as `render_messages`; or the overrides set `messages`.
    """
    if "messages" in overrides:
        raise InvalidRequest("A template call sends variables, not messages.",
                             param="messages")
    return {**spec.parameters, **overrides, "messages": render_messages(spec, variables)}
