"""Prompt templates: declared variables checked before rendering, the sandbox holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.errors import ConfigError, InvalidRequest
from broker.templates import TemplateSpec, render_body
from broker.templates.rendering import check_template
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest
from sluice.templates_cli import read_spec
from workers.ledger.rows import request_row


def spec(content: str = "Hello {{ name }}", **extra: Any) -> TemplateSpec:
    data: dict[str, Any] = {
        "name": "greet",
        "messages": [{"role": "system", "content": "You are {{ persona }}."},
                     {"role": "user", "content": content}],
        "parameters": {"model": "gpt-4o-mini", "temperature": 0.2},
        "variables": [{"name": "name", "type": "string", "required": True},
                      {"name": "persona", "default": "terse"},
                      {"name": "count", "type": "number"},
                      {"name": "loud", "type": "boolean"},
                      {"name": "items", "type": "list"}],
    } | extra
    return TemplateSpec.model_validate(data)


def refusal(template: TemplateSpec, variables: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        render_body(template, variables, {})
    return caught.value


def test_renders_messages_over_the_parameters_with_defaults_and_overrides() -> None:
    body = render_body(spec("Hi {{ name }}{% for i in items %} {{ i }}{% endfor %}"),
                       {"name": "Ada", "items": ["a", "b"]}, {"stream": True})
    assert body == {"model": "gpt-4o-mini", "temperature": 0.2, "stream": True, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi Ada a b"}]}
    assert ChatCompletionRequest.model_validate(body).messages[1].text() == "Hi Ada a b"


def test_a_missing_required_variable_is_named() -> None:
    error = refusal(spec(), {})
    assert error.param == "variables.name"
    assert "'name'" in str(error)


@pytest.mark.parametrize(("name", "value"), [
    ("name", 3), ("count", "3"), ("count", True), ("loud", "yes"), ("items", "a,b")])
def test_a_value_of_the_wrong_type_is_named(name: str, value: Any) -> None:
    values = {"name": "Ada", name: value}
    assert refusal(spec(), values).param == f"variables.{name}"


def test_an_undeclared_variable_is_refused() -> None:
    assert refusal(spec(), {"name": "Ada", "colour": "red"}).param == "variables.colour"


def test_an_optional_variable_without_default_is_undefined_and_strict() -> None:
    template = spec("{{ name }} {{ count }}")
    error = refusal(template, {"name": "Ada"})
    assert "count" in str(error)  # StrictUndefined names it: never an empty string
    ok = spec("{{ name }}{% if count is defined %} x{{ count }}{% endif %}")
    assert render_body(ok, {"name": "A"}, {})["messages"][1]["content"] == "A"


@pytest.mark.parametrize("content", [
    "{{ ''.__class__ }}",
    "{{ name.__class__.__mro__ }}",
    "{{ items.__class__.__subclasses__() }}",
    "{{ lipsum.__globals__ }}",
])
def test_the_sandbox_refuses_attribute_access_to_internals(content: str) -> None:
    template = spec(content)
    with pytest.raises(InvalidRequest) as caught:
        render_body(template, {"name": "Ada", "items": []}, {})
    assert caught.value.code in {"template_error", "missing_variable"}
    assert "unsafe" in str(caught.value) or "undefined" in str(caught.value)


@pytest.mark.parametrize(("content", "raised"), [
    ("{{ count + 'x' }}", "TypeError"), ("{{ 1 / count }}", "ZeroDivisionError")])
def test_a_template_failing_on_the_values_is_the_callers_error(content: str,
                                                               raised: str) -> None:
    error = refusal(spec(content), {"name": "Ada", "count": 0})
    assert (error.code, error.param) == ("template_error", "variables")
    assert raised in str(error)


def test_a_caller_may_not_send_messages() -> None:
    with pytest.raises(InvalidRequest) as caught:
        render_body(spec(), {"name": "Ada"}, {"messages": []})
    assert caught.value.param == "messages"


def test_creation_refuses_bad_syntax_and_undeclared_variables() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_template(spec("{{ name "))
    assert caught.value.param == "messages.1.content"
    with pytest.raises(InvalidRequest, match="'nobody'"):
        check_template(spec("{{ nobody }}"))
    check_template(spec())


@pytest.mark.parametrize("change", [
    {"parameters": {"temperature": 1}},  # no model
    {"parameters": {"model": "m", "messages": []}},
    {"variables": [{"name": "a"}, {"name": "a"}]},
    {"variables": [{"name": "a", "type": "number", "default": "x"}]},
    {"name": "has space"},
])
def test_malformed_specs_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        spec(**change)


def test_template_files_are_named_by_the_command(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("messages:\n  - role: user\n    content: hi\n"
                    "parameters: {model: m}\n")
    assert read_spec("greet", path)["name"] == "greet"
    path.write_text("name: other\nmessages: []\n")
    with pytest.raises(ConfigError):
        read_spec("greet", path)


def test_request_rows_carry_template_and_version() -> None:
    body = ChatCompletionRequest(model="m", messages=[ChatMessage(role="user", content="x")])
    request = InferenceRequest.model_validate({
        "id": "r", "model": "m", "body": body, "created_at": "2030-01-01T00:00:00Z",
        "metadata": {"template": "greet", "template_version": "2"}})
    row = request_row(request)
    assert (row["template"], row["template_version"]) == ("greet", 2)
    odd = request.model_copy(update={"metadata": {"template_version": "two"}})
    assert (request_row(odd)["template"], request_row(odd)["template_version"]) == (None, None)
