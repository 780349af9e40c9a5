"""Template lines in batches: parsing the call, loading templates once, rendering, and
each problem as the line's own error (never the batch's)."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.access import AccessGate, Status
from broker.batches.lines import InputLine, LineError, TemplateCall, parse_line
from broker.batches.template_calls import TemplateBook
from broker.estimates import Estimator
from broker.stores.prices import PriceBook
from broker.templates import PromptTemplate
from schemas import InferenceRequest, Lane
from workers.batches.budget import BatchEstimate
from workers.batches.templated import BatchTemplates
from workers.batches.validation import LineParser, Validation
from workers.ledger.rows import request_row

CHAT = "/v1/chat/completions"
MODELS = frozenset({"m"})


def _template(name: str = "greet", version: int = 1, *, model: str = "m",
              requires_approval: bool = False, content: str = "Hello {{ who }}!",
              created_at: datetime | None = None) -> PromptTemplate:
    return PromptTemplate(
        name=name, version=version, messages=[{"role": "user", "content": content}],
        created_at=created_at,
        parameters={"model": model, "temperature": 0.5}, requires_approval=requires_approval,
        variables=[{"name": "who", "type": "string", "required": True},
                   {"name": "times", "type": "number", "default": 1}])


def _raw(body: dict[str, Any], *, name: str = "greet", custom_id: str = "t1") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST",
                       "url": f"/v1/templates/{name}/completions", "body": body}).encode()


def _parse(body: dict[str, Any], **options: Any) -> InputLine:
    parsed = parse_line(3, _raw(body, **options), CHAT, MODELS)
    assert isinstance(parsed, InputLine)
    return parsed


class Templates:
    """A fake store of templates that counts its queries."""

    def __init__(self, *templates: PromptTemplate):
        self.templates = list(templates)
        self.queries: list[tuple[set[str], set[tuple[str, int]]]] = []

    async def __call__(self, names: Collection[str],
                       pinned: Collection[tuple[str, int]]) -> list[PromptTemplate]:
        self.queries.append((set(names), set(pinned)))
        latest = {t.name: t for t in sorted(self.templates, key=lambda t: t.version)}
        return [t for t in self.templates
                if (t.name in names and latest[t.name] is t) or (t.name, t.version) in pinned]


class Grants:
    """A fake grant reader: the statuses of (tenant, key) for each resource."""

    def __init__(self, statuses: dict[str, list[Status]] | None = None):
        self.statuses_of = statuses or {}
        self.asked: list[str] = []

    async def statuses(self, tenant: str, key_id: str, resource: str) -> list[Status]:
        self.asked.append(resource)
        return self.statuses_of.get(resource, [])


async def _rendered(line: InputLine, *templates: PromptTemplate,
                    grants: Grants | None = None) -> InputLine:
    loaded = BatchTemplates(Templates(*templates), AccessGate(grants or Grants()), "acme", "k1")
    [rendered] = await loaded.render([line], MODELS)
    return rendered


def test_a_template_url_is_read_as_a_call_without_a_body() -> None:
    parsed = _parse({"variables": {"who": "Ada"}, "version": "2", "max_tokens": 5})
    assert parsed.body is None and parsed.problem is None and parsed.unrendered
    assert parsed.call == TemplateCall("greet", 2, {"who": "Ada"}, {"max_tokens": 5})
    assert parsed.metadata() == {}  # nothing rendered yet: no template to record
    latest = _parse({"variables": {"who": "Ada"}})
    assert latest.call is not None and latest.call.version is None


@pytest.mark.parametrize(("body", "problem"), [
    ({"variables": ["Ada"]}, "Invalid value for 'variables'"),
    ({"variables": {}, "version": 0}, "Invalid value for 'version'"),
    ({"variables": {}, "version": True}, "Invalid value for 'version'"),
    ({"variables": {}, "version": 2**40}, "Invalid value for 'version'"),
])
def test_a_malformed_call_is_the_lines_problem(body: dict[str, Any], problem: str) -> None:
    parsed = _parse(body)
    assert parsed.body is None and parsed.problem is not None
    assert parsed.problem.startswith(problem) and not parsed.unrendered


def test_template_urls_stay_structural_errors_elsewhere() -> None:
    # Templates are chat prompts: an embeddings batch refuses the url as any other.
    embeddings = parse_line(1, _raw({}), "/v1/embeddings", frozenset({"e"}))
    assert isinstance(embeddings, LineError) and embeddings.code == "mismatched_endpoint"
    for url in ("/v1/templates/greet", "/v1/templates/a/b/completions", "/v1/completions"):
        raw = json.dumps({"custom_id": "x", "method": "POST", "url": url, "body": {}})
        wrong = parse_line(1, raw.encode(), CHAT, MODELS)
        assert isinstance(wrong, LineError) and wrong.code == "mismatched_endpoint"


async def test_a_template_line_renders_into_an_ordinary_chat_request() -> None:
    line = _parse({"variables": {"who": "Ada"}, "max_tokens": 5})
    rendered = await _rendered(line, _template(), _template(version=2, content="Hi {{ who }}"))
    assert rendered.body is not None and rendered.problem is None
    sent = rendered.body.model_dump(exclude_none=True)
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("m", 5, 0.5)
    assert sent["messages"] == [{"role": "user", "content": "Hi Ada"}]  # the latest version
    assert rendered.metadata() == {"template": "greet", "template_version": "2"}
    pinned = await _rendered(_parse({"variables": {"who": "Ada"}, "version": 1}),
                             _template(), _template(version=2, content="Hi {{ who }}"))
    assert pinned.body is not None and pinned.metadata()["template_version"] == "1"
    assert pinned.body.model_dump(exclude_none=True)["messages"][0]["content"] == "Hello Ada!"


@pytest.mark.parametrize(("body", "name", "code", "words"), [
    ({"variables": {"who": "Ada"}}, "nope", "not_found", "No template 'nope'"),
    ({"variables": {"who": "Ada"}, "version": 9}, "greet", "not_found",
     "No version 9 of template 'greet'"),
    ({"variables": {"who": "Ada", "whom": 1}}, "greet", "unknown_variable", "'whom'"),
    ({"variables": {}}, "greet", "missing_variable", "'who'"),
    ({"variables": {"who": "Ada", "times": "two"}}, "greet", "invalid_variable", "'times'"),
    ({"variables": {"who": "Ada"}, "messages": []}, "greet", None, "not messages"),
    ({"variables": {"who": "Ada"}, "stream": True}, "greet", None, "'stream'"),
    ({"variables": {"who": "Ada"}, "model": "other"}, "greet", None, "'other' does not exist"),
])
async def test_each_template_problem_is_answered_in_the_lines_error(
    body: dict[str, Any], name: str, code: str | None, words: str
) -> None:
    rendered = await _rendered(_parse(body, name=name), _template())
    assert rendered.body is None and rendered.problem is not None
    assert words in rendered.problem and rendered.code == code
    assert rendered.metadata() == {}


async def test_a_rendered_model_the_batch_may_not_use_is_refused() -> None:
    rendered = await _rendered(_parse({"variables": {"who": "Ada"}}), _template(model="gated"))
    assert rendered.body is None and rendered.problem is not None
    assert "The model 'gated' does not exist or you do not have access" in rendered.problem


async def test_a_template_raising_at_render_time_is_the_lines_problem() -> None:
    adding = _template(content="{{ who + 1 }}")  # a string plus a number: TypeError
    rendered = await _rendered(_parse({"variables": {"who": "Ada"}}), adding)
    assert rendered.body is None and rendered.code == "template_error"


async def test_the_latest_versions_approval_flag_decides_for_every_version() -> None:
    old, gated = _template(), _template(version=2, requires_approval=True)
    for body in ({"variables": {"who": "Ada"}}, {"variables": {"who": "Ada"}, "version": 1}):
        refused = await _rendered(_parse(body), old, gated)
        assert refused.body is None and refused.code == "access_required"
        assert refused.problem is not None and "template:greet" in refused.problem
    pending = await _rendered(_parse({"variables": {"who": "Ada"}}), old, gated,
                              grants=Grants({"template:greet": ["pending"]}))
    assert pending.code == "access_pending"
    denied = await _rendered(_parse({"variables": {"who": "Ada"}}), old, gated,
                             grants=Grants({"template:greet": ["denied"]}))
    assert denied.code == "access_denied"
    approved = await _rendered(_parse({"variables": {"who": "Ada"}, "version": 1}), old,
                               gated, grants=Grants({"template:greet": ["approved"]}))
    assert approved.body is not None and approved.metadata()["template_version"] == "1"
    # Approval was only ever a question for the template that requires it.
    grants = Grants()
    await _rendered(_parse({"variables": {"who": "Ada"}}), old, grants=grants)
    assert grants.asked == []


def test_lines_naming_no_version_render_the_version_latest_when_the_batch_was_created(
) -> None:
    # A relaunch (or a launch that waited) after version 3 was published: the batch was
    # made when version 2 was the latest.
    made = datetime(2026, 12, 1, 12, tzinfo=UTC)
    versions = [_template(version=n, content=f"v{n} {{{{ who }}}}",
                          created_at=made + timedelta(hours=n - 2)) for n in (1, 2, 3)]
    book = TemplateBook(as_of=made)
    book.add({"greet", "fresh"}, [*versions, _template("fresh", created_at=made
                                                        + timedelta(hours=1))])
    unpinned = book.render(_parse({"variables": {"who": "Ada"}}), MODELS)
    assert unpinned.body is not None and unpinned.metadata()["template_version"] == "2"
    assert unpinned.body.model_dump(exclude_none=True)["messages"][0]["content"] == "v2 Ada"
    pinned = book.render(_parse({"variables": {"who": "Ada"}, "version": 3}), MODELS)
    assert pinned.metadata()["template_version"] == "3"
    # A template first made after the batch renders with its latest version.
    fresh = book.render(_parse({"variables": {"who": "Ada"}}, name="fresh"), MODELS)
    assert fresh.body is not None and fresh.metadata()["template_version"] == "1"
    # Without a creation time (a book of the HTTP route), the latest now.
    now = TemplateBook()
    now.add({"greet"}, versions)
    assert now.render(_parse({"variables": {"who": "Ada"}}), MODELS).metadata()[
        "template_version"] == "3"


def test_approval_is_the_latest_versions_even_when_an_older_one_renders() -> None:
    made = datetime(2026, 12, 1, 12, tzinfo=UTC)
    book = TemplateBook(as_of=made)
    book.add({"greet"}, [_template(created_at=made - timedelta(hours=1)),
                         _template(version=2, requires_approval=True,
                                   created_at=made + timedelta(hours=1))])
    refused = book.render(_parse({"variables": {"who": "Ada"}}), MODELS)
    assert refused.body is None and refused.code == "access_required"


def test_a_book_never_asked_about_approval_refuses() -> None:
    book = TemplateBook()
    book.add({"greet"}, [_template(requires_approval=True)])
    refused = book.render(_parse({"variables": {"who": "Ada"}}), MODELS)
    assert refused.body is None and refused.code == "access_required"


async def test_templates_load_once_per_launch_and_both_passes_agree() -> None:
    store = Templates(_template(), _template(version=2), _template("other"))
    grants = Grants({"template:gated": ["approved"]})
    store.templates.append(_template("gated", requires_approval=True))
    loaded = BatchTemplates(store, AccessGate(grants), "acme", "k1")
    file = b"\n".join([
        json.dumps({"custom_id": "plain", "method": "POST", "url": CHAT, "body": {
            "model": "m", "messages": [{"role": "user", "content": "hi"}]}}).encode(),
        _raw({"variables": {"who": "A"}}, custom_id="latest"),
        _raw({"variables": {"who": "B"}, "version": 1}, custom_id="pinned"),
        _raw({"variables": {"whom": "C"}}, custom_id="bad"),
        _raw({"variables": {"who": "D"}}, name="gated", custom_id="gated"),
        _raw({"variables": {"who": "E"}}, name="other", custom_id="other"),
    ]) + b"\n"
    validation = Validation(CHAT, MODELS, 100, 10_000,
                            BatchEstimate(PriceBook([]), Estimator(None)))
    assert validation.feed(file[:200])
    await loaded.settle(validation)
    assert validation.feed(file[200:])
    await loaded.settle(validation)
    validation.end()
    await loaded.settle(validation)
    assert validation.errors() is None
    assert (validation.total, validation.valid) == (6, 5)
    assert [(error.line, error.code) for error in validation.invalid] == [
        (4, "invalid_request")]
    assert "'whom'" in validation.invalid[0].message
    assert validation.estimate.tokens > 0

    # The second pass (a parser, as the launcher uses it) reuses what the first loaded.
    queries = len(store.queries)
    parser = LineParser(CHAT, MODELS, 10_000, skip=0)
    lines = await loaded.render(parser.feed(file) + parser.end(), MODELS)
    assert len(store.queries) == queries and grants.asked == ["template:gated"]
    answers = {line.custom_id: (line.body is not None, line.metadata().get("template"),
                                line.metadata().get("template_version")) for line in lines}
    assert answers == {"plain": (True, None, None), "latest": (True, "greet", "2"),
                       "pinned": (True, "greet", "1"), "bad": (False, None, None),
                       "gated": (True, "gated", "1"), "other": (True, "other", "1")}
    # Every name read at most once as latest, every pinned version at most once.
    names = [name for query in store.queries for name in query[0]]
    assert sorted(names) == sorted(set(names))


def test_a_rendered_lines_template_reaches_the_ledger_row() -> None:
    # Native-lane lines get their `requests` row from `record_lines` (no request topic):
    # the same row the ledger writes, so the template travels in the message's metadata.
    book = TemplateBook()
    book.add({"greet"}, [_template(version=3)])
    line = book.render(_parse({"variables": {"who": "Ada"}}), MODELS)
    assert line.body is not None
    message = InferenceRequest(
        id="batch_req_1_3", model="m", body=line.body, tenant="acme", lane=Lane.BATCH,
        created_at=datetime.now(UTC),
        metadata={"batch_id": "batch_1", "custom_id": line.custom_id, **line.metadata()})
    row = request_row(message)
    assert (row["template"], row["template_version"]) == ("greet", 3)
