"""Rendering a batch's template lines (pure; the launcher runs it in a worker thread).

A `TemplateBook` holds the templates a launch has loaded (`workers.batches.templated` fills
it with one query per chunk of lines) and the batch key's standing for those that require
approval. It renders a template line exactly as `POST /v1/templates/{name}/completions`
would, then checks the result as any other line (`check_body`): a problem is the line's
entry in the error file, never the batch's failure.

Whether a template requires approval is its latest version's flag, for every version, so
pinning an older version cannot get around a requirement added later (migration 0023).

A line that names no version renders with the template's latest version when the batch
was created (`as_of`), not at launch: a batch launched again after a crash, or one that
waited in the queue while a new version was published, runs the prompt its submitter saw
on every line. A template first created after the batch renders with its latest version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from broker.batches.lines import CHAT_ENDPOINT, InputLine, check_body
from broker.errors import AccessNotApproved, InvalidRequest
from broker.templates import PromptTemplate, render_body
from broker.templates.rendering import MAX_RENDERED_CHARS


@dataclass(slots=True)
class TemplateBook:
    """Templates loaded for one launch: both passes over the file read the same ones, so
    they give every line the same answer."""

    as_of: datetime | None = None
    """When the batch was created: a line naming no version renders with the version that
    was latest then (None: with the latest now)."""
    latest: dict[str, PromptTemplate | None] = field(default_factory=dict)
    """Each name's latest version; None: no such template. Its flag decides approval."""
    current_then: dict[str, PromptTemplate] = field(default_factory=dict)
    """Each name's latest version at `as_of`, when it existed then."""
    versions: dict[tuple[str, int], PromptTemplate] = field(default_factory=dict)
    """Every version loaded, by (name, version); a pinned version absent here is unknown."""
    refusals: dict[str, AccessNotApproved | None] = field(default_factory=dict)
    """Why the batch's key may not call a template that requires approval (None: it may)."""
    max_chars: int = MAX_RENDERED_CHARS
    """The most characters a line's messages may render to: past it the line is answered
    `template_too_large` instead of holding the launcher's memory."""

    def wanted(self, lines: Iterable[InputLine]) -> tuple[set[str], set[tuple[str, int]]]:
        """What `lines` need that is not loaded yet: names (whose latest version is read in
        any case: it decides approval) and pinned (name, version) pairs."""
        names: set[str] = set()
        pinned: set[tuple[str, int]] = set()
        for line in lines:
            call = line.call
            if call is None or not line.unrendered:
                continue
            if call.name not in self.latest:
                names.add(call.name)
            if call.version is not None and (call.name, call.version) not in self.versions:
                pinned.add((call.name, call.version))
        return names, pinned

    def add(self, names: Iterable[str], templates: Iterable[PromptTemplate]) -> None:
        """Record the templates read for `names` (their latest and any pinned versions)."""
        names = set(names)
        for template in templates:
            self.versions[template.name, template.version] = template
            if template.name not in names:
                continue
            if _newer(template, self.latest.get(template.name)):
                self.latest[template.name] = template
            if self._existed_then(template) and _newer(template,
                                                       self.current_then.get(template.name)):
                self.current_then[template.name] = template
        for name in names:
            self.latest.setdefault(name, None)

    def needs_approval(self) -> list[str]:
        """Names that require approval whose refusal (or not) is not known yet."""
        return [name for name, template in self.latest.items()
                if template is not None and template.requires_approval
                and name not in self.refusals]

    def render(self, line: InputLine, models: frozenset[str]) -> InputLine:
        """`line` rendered into an ordinary chat request, or answered with its problem;
        any other line unchanged. The rendered line's call names the version used."""
        call = line.call
        if call is None or not line.unrendered:
            return line
        latest = self.latest.get(call.name)
        if latest is None:
            return replace(line, problem=f"No template '{call.name}'.", code="not_found")
        if latest.requires_approval:
            # Not asked yet (no loader ran) counts as never requested: refuse, never pass.
            refused = self.refusals.get(call.name, AccessNotApproved(
                f"template:{call.name} requires approval before use.", code="access_required"))
            if refused is not None:
                return replace(line, problem=str(refused), code=refused.code)
        template = self.current_then.get(call.name, latest) if call.version is None \
            else self.versions.get((call.name, call.version))
        if template is None:
            return replace(line, problem=f"No version {call.version} of template "
                           f"'{call.name}'.", code="not_found")
        try:
            body = render_body(template, call.variables, call.overrides,
                               max_chars=self.max_chars)
        except InvalidRequest as exc:  # the template's own runtime errors included
            return replace(line, problem=str(exc), code=exc.code)
        checked = check_body(line.line, line.custom_id, body, CHAT_ENDPOINT, models)
        return replace(checked, call=replace(call, version=template.version))

    def _existed_then(self, template: PromptTemplate) -> bool:
        return (self.as_of is not None and template.created_at is not None
                and template.created_at <= self.as_of)


def _newer(template: PromptTemplate, than: PromptTemplate | None) -> bool:
    return than is None or than.version < template.version
