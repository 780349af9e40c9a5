"""Loading the prompt templates a batch's lines call, for the launcher.

Parsing runs in a worker thread and templates live in PostgreSQL: the launcher parses a
chunk (`TemplateCall`s, no bodies yet), then `BatchTemplates.load` reads what the chunk
needs and the book does not hold yet (one query), asks the access gate about templates
that require approval (once per name), and the thread renders (`TemplateBook.render`).
One `BatchTemplates` serves a whole launch, so its two passes agree on every line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import datetime

from broker.access import AccessGate
from broker.batches.lines import InputLine
from broker.batches.template_calls import TemplateBook
from broker.errors import AccessNotApproved
from broker.templates import PromptTemplate
from workers.batches.validation import Validation

TemplateLoader = Callable[[Collection[str], Collection[tuple[str, int]]],
                          Awaitable[list[PromptTemplate]]]
"""Reads the latest version of some names (now, and at the batch's creation) and some
pinned versions, in one query (`broker.stores.templates.get_templates` bound to an engine
and the batch's creation time)."""


class BatchTemplates:
    """The templates of one launch, and whether the batch's key may call them."""

    def __init__(self, loader: TemplateLoader, gate: AccessGate, tenant: str,
                 api_key_id: str | None, *, as_of: datetime | None = None):
        self._loader = loader
        self._gate = gate
        self._tenant = tenant
        # A batch made without a key (none recorded) is judged by its tenant's grants.
        self._key_id = api_key_id or ""
        # Lines naming no version render with the versions latest at `as_of`.
        self.book = TemplateBook(as_of=as_of)

    async def load(self, lines: Iterable[InputLine]) -> None:
        """Make the book ready to render `lines`.

        Raises:
            DatabaseUnavailable: PostgreSQL cannot be reached (the launch is retried).
        """
        names, pinned = self.book.wanted(lines)
        if names or pinned:
            self.book.add(names, await self._loader(names, pinned))
        for name in self.book.needs_approval():
            try:
                await self._gate.require(self._tenant, self._key_id, f"template:{name}")
            except AccessNotApproved as refused:
                self.book.refusals[name] = refused
            else:
                self.book.refusals[name] = None

    async def settle(self, validation: Validation) -> None:
        """Load what the first pass's pending lines call, then settle them (in a thread:
        rendering and estimating are CPU work)."""
        await self.load(validation.pending)
        await asyncio.to_thread(validation.settle, self.book)

    async def render(self, lines: list[InputLine], models: frozenset[str]) -> list[InputLine]:
        """`lines` of the second pass with their template lines rendered (or answered)."""
        if not any(line.unrendered for line in lines):
            return lines
        await self.load(lines)
        return await asyncio.to_thread(
            lambda: [self.book.render(line, models) for line in lines])
