"""A template render is bounded: a caller's values cannot make it allocate past the limit
(the largest body ingress accepts), neither by looping nor in one `*` or `**`; the HTTP
route answers 400 `template_too_large` and renders off its event loop."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import ingress.templates
from broker.batches.lines import InputLine, parse_line
from broker.batches.template_calls import TemplateBook
from broker.config import parse_config
from broker.errors import InvalidRequest
from broker.templates import MAX_RENDERED_CHARS, PromptTemplate, TemplateSpec, render_body
from ingress.services import Principal
from tests.unit.edge_app import RoleKeys, bearer, edge_client

VARIABLES = [{"name": "ctx", "type": "string"}, {"name": "s", "type": "string"},
             {"name": "n", "type": "number"}, {"name": "qs", "type": "list"}]
LOOP = "{% for q in qs %}Context: {{ ctx }} Q: {{ q }}{% endfor %}"


def template(*contents: str, version: int | None = None) -> Any:
    data: dict[str, Any] = {
        "name": "big", "messages": [{"role": "user", "content": c} for c in contents],
        "parameters": {"model": "m"}, "variables": VARIABLES}
    if version is None:
        return TemplateSpec.model_validate(data)
    return PromptTemplate.model_validate({**data, "version": version})


def too_large(spec: TemplateSpec, variables: dict[str, Any], **limit: int) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        render_body(spec, variables, {}, **limit)
    assert (caught.value.code, caught.value.param) == ("template_too_large", "variables")
    assert "'big'" in str(caught.value)
    return caught.value


def test_a_loop_over_a_callers_long_list_stops_at_the_limit() -> None:
    # ~2 TB asked for, in a body that fits the 4 MiB limit.
    error = too_large(template(LOOP), {"ctx": "c" * 2_000_000, "qs": [0] * 1_000_000})
    assert f"{MAX_RENDERED_CHARS:,} characters" in str(error)


@pytest.mark.parametrize("content", ["{{ s * n }}", "{{ n * s }}", "{{ [s] * n }}",
                                     "{{ (s, s) * n }}", "{{ (s.encode() * n)|length }}"])
def test_one_multiplication_cannot_build_a_huge_value(content: str) -> None:
    error = too_large(template(content), {"s": "ab", "n": 10**8})
    assert "items" in str(error)


@pytest.mark.parametrize("content", ["{{ 10 ** n }}", "{{ 2 ** 2000 }}",
                                     "{{ (10 ** 100) ** 1000 }}", "{{ 2.5 ** n }}",
                                     "{{ (10 ** 1000) * (10 ** 1000) * (10 ** 1000) "
                                     "* (10 ** 1000) * (10 ** 1000) }}"])
def test_powers_and_products_of_huge_numbers_are_refused(content: str) -> None:
    too_large(template(content), {"n": 10**8})


def test_the_limit_counts_all_messages_and_is_the_callers() -> None:
    spec = template("{{ s }}", "{{ s }}")
    assert render_body(spec, {"s": "x" * 5}, {}, max_chars=10)["messages"][1] == {
        "role": "user", "content": "xxxxx"}
    too_large(spec, {"s": "x" * 6}, max_chars=10)  # 12 characters in all
    too_large(template("{{ s * n }}"), {"s": "x", "n": 11}, max_chars=10)


def test_ordinary_templates_render_as_before() -> None:
    spec = template("{{ '-' * 3 }} {{ s * n }} {{ 2 ** 10 }} {{ n * 1.5 }} {{ [1] * 2 }} "
                    "{{ 2 ** 0.5 }}{% for q in qs %} {{ q }}{% endfor %}", "{{ ctx }}")
    body = render_body(spec, {"s": "ab", "n": 3, "qs": ["a", "b"], "ctx": "c"}, {"seed": 1})
    assert body == {"model": "m", "seed": 1, "messages": [
        {"role": "user", "content": "--- ababab 1024 4.5 [1, 1] 1.4142135623730951 a b"},
        {"role": "user", "content": "c"}]}


def test_a_batch_line_is_answered_with_the_problem() -> None:
    raw = (b'{"custom_id": "t1", "method": "POST", "url": "/v1/templates/big/completions",'
           b' "body": {"variables": {"s": "ab", "n": 100000000}}}')
    line = parse_line(1, raw, "/v1/chat/completions", frozenset({"m"}))
    assert isinstance(line, InputLine)
    book = TemplateBook()
    book.add({"big"}, [template("{{ s * n }}", version=1)])
    answered = book.render(line, frozenset({"m"}))
    assert answered.body is None and answered.code == "template_too_large"
    small = TemplateBook(max_chars=10)
    small.add({"big"}, [template("{{ ctx }}", version=1)])
    long_line = raw.replace(b'"s": "ab", "n": 100000000', b'"ctx": "' + b"c" * 11 + b'"')
    line = parse_line(2, long_line, "/v1/chat/completions", frozenset({"m"}))
    assert isinstance(line, InputLine)
    assert small.render(line, frozenset({"m"})).code == "template_too_large"


# The HTTP route, with a body limit smaller than the default so that the test shows the
# edge passes its own limit in.
BODY_LIMIT = 2048


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    stored = template(LOOP, "{{ s * n }}", version=1)

    async def get_template(engine: object, name: str, version: int | None) -> Any:
        return stored if name == "big" else None  # the store, without PostgreSQL

    monkeypatch.setattr(ingress.templates, "get_template", get_template)
    config = parse_config({"models": {"m": {"deployments": ["sim"]}}, "deployments": {
        "sim": {"provider": "simulated", "model": "gpt-4o-mini"}}})
    keys = RoleKeys({"sk-user": Principal(tenant="acme", api_key_id="k1")})
    async with edge_client(config, keys, admin_key="a" * 48, kafka="template-limits",
                           prefix="tl.", max_body_bytes=BODY_LIMIT) as client:
        yield client


@pytest.mark.parametrize("variables", [
    {"ctx": "c" * 1000, "qs": [0] * 100, "s": "", "n": 0},  # the loop passes the limit
    {"ctx": "", "qs": [], "s": "ab", "n": 2000},  # 4000 characters in one expression
])
async def test_the_route_answers_400_with_the_envelope(client: httpx.AsyncClient,
                                                       variables: dict[str, Any]) -> None:
    response = await client.post("/v1/templates/big/completions", headers=bearer("sk-user"),
                                 json={"variables": variables})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "template_too_large", "variables")
    assert "'big'" in error["message"] and f"{BODY_LIMIT:,} characters" in error["message"]


async def test_the_route_renders_off_the_event_loop(client: httpx.AsyncClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    def render(*args: Any, **kwargs: Any) -> dict[str, Any]:
        threads.append(threading.get_ident())
        return render_body(*args, **kwargs)

    monkeypatch.setattr(ingress.templates, "render_body", render)
    response = await client.post("/v1/templates/big/completions", headers=bearer("sk-user"),
                                 json={"variables": {"s": "ab", "n": 2000}})
    assert response.status_code == 400
    assert threads and threads[0] != threading.get_ident()


# One call that would build a huge value from small inputs: a caller's width (n = 10**12
# would be a MemoryError, not a refusal, if the call ran), or one input's length times
# another's (limit 1,000, results of ~10,000). Assigned with `set`, never output, so only
# the bound checked before the call can refuse them.
HUGE = {"s": "ab", "n": 10**12, "ctx": "a" * 100, "qs": ["a" * 100] * 100}
GROWING_CALLS = [
    ("s|center(n)", "center"), ("s.center(n)", "str.center()"),
    ("s.ljust(n)", "str.ljust()"), ("s.rjust(n)", "str.rjust()"),
    ("s.zfill(n)", "str.zfill()"), ("(s ~ '\t').expandtabs(n)", "str.expandtabs()"),
    ("s.encode().center(n)", "bytes.center()"),
    ("(s ~ '\n' ~ s)|indent(n)", "indent"), ("(ctx|join('\n'))|indent(ctx)", "indent"),
    ("ctx|wordwrap(1, wrapstring=ctx)", "wordwrap"),
    ("'%*s' % (n, s)", "'%' format"), ("'%1000000000000s' % s", "'%' format"),
    ("'%.1000000000000f' % 1.5", "'%' format"),
    ("('%(c)s' * 100) % {'c': ctx}", "'%' format"),
    ("'{:>{}}'.format(s, n)", "'{:>1000000000000}'"),
    ("'{:>1000000000000}'.format(s)", "'{:>1000000000000}'"),
    ("'{a:>{b}}'.format_map({'a': s, 'b': n})", "'{:>1000000000000}'"),
    ("('{0}' * 100).format(ctx)", "str.format()"),
    ("('{:>{}}'|safe).format(s, n)", "'{:>1000000000000}'"),
    ("'%*s'|format(n, s)", "format"), ("'%(a)1000000000000s'|format(a=s)", "format"),
    ("ctx|join(ctx)", "join"), ("qs|join", "join"), ("ctx.join(ctx)", "str.join()"),
    ("ctx.join(qs)", "str.join()"), ("ctx.replace('a', ctx)", "str.replace()"),
    ("ctx|replace('a', ctx)", "replace"), ("ctx.replace('', ctx)", "str.replace()"),
    ("ctx.translate({97: ctx})", "str.translate()"), ("[s]|map('center', n)|list", "center"),
    ("qs|tojson(indent=n)", "tojson"), ("lipsum(n)", "lipsum"),
    ("[1]|batch(n, 0)|list", "batch"), ("[1]|slice(n)|list", "slice"),
]


@pytest.mark.parametrize(("expression", "refused"), GROWING_CALLS)
def test_a_growing_call_is_refused_before_it_runs(expression: str, refused: str) -> None:
    error = too_large(template(f"{{% set x = {expression} %}}ok"), HUGE, max_chars=1000)
    assert refused in str(error) and "1,000 characters" in str(error)


@pytest.mark.parametrize(("expression", "rendered"), [
    ("s|center(8)", "   ab   "), ("s.center(7, '*')", "***ab**"), ("s.ljust(4) ~ '|'", "ab  |"),
    ("[1, 2, 3]|batch(2, 0)|list", "[[1, 2], [3, 0]]"),
    ("[1, 2, 3]|slice(2)|list", "[[1, 2], [3]]"),
    ("s.zfill(4)", "00ab"), ("'a\tb'.expandtabs(4)", "a   b"),
    ("'a\nb'|indent(2, first=true)", "  a\n  b"), ("'a b c d'|wordwrap(3)", "a b\nc d"),
    ("'%5s|%-3d|%.2f|%%' % (s, 7, 1.234)", "   ab|7  |1.23|%"),
    ("'%(a)s-%(a)s' % {'a': s}", "ab-ab"), ("7 % 3", "1"), ("'%s!'|format(s)", "ab!"),
    ("'{:>5}|{:^{}}'.format(s, s, 6)", "   ab|  ab  "), ("'{a}'.format_map({'a': n})", "3"),
    ("s|replace('a', 'xy')", "xyb"), ("s.replace('b', 'cd')", "acd"),
    ("qs|join(', ')", "a, b"), ("', '.join(qs)", "a, b"), ("[1, 2]|join", "12"),
    ("[{'k': 'x'}, {'k': 'y'}]|join('/', attribute='k')", "x/y"),
    ("s.translate({97: 'A'})", "Ab"), ("'abcdefghijklmnop'|truncate(9)", "abcdef..."),
    ("[1, [s]]|tojson(indent=1)", '[\n 1,\n [\n  "ab"\n ]\n]'), ("qs|tojson", '["a", "b"]'),
    ("lipsum(1, false, 2, 3)|wordcount", "2"),
])
def test_ordinary_growing_calls_render_as_before(expression: str, rendered: str) -> None:
    body = render_body(template(f"{{{{ {expression} }}}}"),
                       {"s": "ab", "n": 3, "qs": ["a", "b"]}, {}, max_chars=1000)
    assert body["messages"][0]["content"] == rendered


def test_a_growing_call_just_within_the_limit_renders() -> None:
    spec = template("{{ s.center(n) }}{{ ctx.replace('a', 'bb') }}")
    content = render_body(spec, {"s": "ab", "n": 500, "ctx": "a" * 250}, {},
                          max_chars=1000)["messages"][0]["content"]
    assert len(content) == 1000


@pytest.mark.parametrize("expression", [
    "('x'|safe).join([ctx])", "('a'|safe).replace('a', ctx)", "('%s'|safe) % ctx",
    "'%s' % ctx.encode()",
])
def test_escaping_and_reprs_are_counted_at_their_full_length(expression: str) -> None:
    # Each result is several times its inputs' length: escaped quotes, a bytes repr.
    error = too_large(template(f"{{% set x = {expression} %}}ok"), HUGE | {"ctx": "'" * 300},
                      max_chars=1000)
    assert "1,000 characters" in str(error)
