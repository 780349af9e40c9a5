"""What a prompt template is: messages with placeholders, default parameters, variables.

The spec is what `sluice templates create --file` reads (YAML) and what
`POST /v1/admin/templates` takes (JSON); a stored template adds its version. Variables are
declared so a caller's mistake is a 400 naming the variable, before anything renders.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from broker.errors import InvalidRequest

TEMPLATE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
VariableType = Literal["string", "number", "boolean", "list"]

# Parameters a template may not preset: the messages are the template's own.
_NOT_PARAMETERS = frozenset({"messages"})


class TemplateMessage(BaseModel):
    """One chat message whose content is a Jinja2 template."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=100_000)]


class TemplateVariable(BaseModel):
    """A declared variable: its type, whether callers must give it, and its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")]
    type: VariableType = "string"
    required: bool = False
    default: Any = None

    @model_validator(mode="after")
    def _default_has_type(self) -> TemplateVariable:
        if self.default is not None and not has_type(self, self.default):
            raise ValueError(f"the default of {self.name!r} is not a {self.type}")
        return self


class TemplateSpec(BaseModel):
    """A template as its author writes it (no version: the store assigns it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=TEMPLATE_NAME)]
    description: Annotated[str, Field(max_length=2000)] | None = None
    messages: Annotated[list[TemplateMessage], Field(min_length=1, max_length=100)]
    # Chat completion parameters the request starts from (model, temperature, ...).
    parameters: dict[str, Any] = Field(default_factory=dict)
    variables: Annotated[list[TemplateVariable], Field(max_length=100)] = Field(
        default_factory=list)
    # README "Access approval": callers need an approved grant for `template:<name>`.
    # The latest version's flag decides for every version, so pinning an older one cannot
    # get around a requirement added later (`ingress.templates`, the batch launcher).
    requires_approval: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> TemplateSpec:
        names = [variable.name for variable in self.variables]
        twice = {name for name in names if names.count(name) > 1}
        if twice:
            raise ValueError(f"variable {sorted(twice)[0]!r} is declared twice")
        preset = _NOT_PARAMETERS & self.parameters.keys()
        if preset:
            raise ValueError(f"parameters may not set {sorted(preset)[0]!r}")
        if not isinstance(self.parameters.get("model"), str):
            raise ValueError("parameters.model must name the model the template runs on")
        return self


class PromptTemplate(TemplateSpec):
    """A stored template: a spec with its (immutable) version."""

    version: Annotated[int, Field(ge=1)]
    created_at: datetime | None = None

    def body(self) -> dict[str, Any]:
        """The template as the admin API and `sluice templates show` print it."""
        data = self.model_dump(mode="json", exclude={"created_at"})
        created = self.created_at
        return {"object": "prompt_template", **data,
                "created_at": int(created.timestamp()) if created else None}


def has_type(variable: TemplateVariable, value: Any) -> bool:
    """Whether `value` (decoded JSON) is of the variable's declared type."""
    return {
        "string": isinstance(value, str),
        # JSON has one number type; a boolean is not a number even though Python says so.
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "list": isinstance(value, list),
    }[variable.type]


def bind_variables(template: TemplateSpec, given: dict[str, Any]) -> dict[str, Any]:
    """The values to render with: the caller's, checked against the declarations, and the
    defaults of those it left out.

    Raises:
        InvalidRequest: an undeclared, missing or mistyped variable (named in the message
            and in `param`).
    """
    declared = {variable.name: variable for variable in template.variables}
    for name in given:
        if name not in declared:
            raise InvalidRequest(f"Template '{template.name}' declares no variable '{name}'.",
                                 param=f"variables.{name}", code="unknown_variable")
    values: dict[str, Any] = {}
    for name, variable in declared.items():
        if name in given and given[name] is not None:
            if not has_type(variable, given[name]):
                raise InvalidRequest(f"Variable '{name}' must be a {variable.type}.",
                                     param=f"variables.{name}", code="invalid_variable")
            values[name] = given[name]
        elif variable.default is not None:
            values[name] = variable.default
        elif variable.required:
            raise InvalidRequest(f"Missing required variable '{name}' of template "
                                 f"'{template.name}'.", param=f"variables.{name}",
                                 code="missing_variable")
    return values


def parse_version(raw: object, param: str = "version") -> int | None:
    """A version a caller gave (a positive integer, or its digits as a query string gives
    them); None when it gave none (the latest).

    Raises:
        InvalidRequest: anything else (`param` names where it came from).
    """
    if raw is None:
        return None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 9:
        raw = int(raw)
    # The version column is a PostgreSQL integer; a boolean is no number here.
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 2**31 - 1:
        raise InvalidRequest(f"{param} must be a positive integer.", param=param)
    return raw


def valid_name(name: str) -> bool:
    """Whether `name` can be a template's name (also a URL path segment)."""
    return re.match(TEMPLATE_NAME, name) is not None
