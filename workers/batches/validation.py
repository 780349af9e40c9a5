"""The launcher's CPU work, synchronous and free of I/O: splitting, parsing and estimating a
batch's lines, fed one chunk of the input file (about 1 MiB) at a time.

The launcher runs each call in a worker thread (`asyncio.to_thread`). The tracker shares
`sluice ledger`'s event loop, and parsing plus token counting take about 2 s per 4 MB of
lines: on the loop, one large file would stall the ledger's consumer (and so billing) for
everyone that long.

Template lines need their templates, read from PostgreSQL between two thread calls: the
first pass `feed`s a chunk (structure), the launcher loads what its template lines call,
then `settle` renders and counts the chunk's lines, in order.
"""

from __future__ import annotations

from broker.batches.lines import InputLine, LineError, LineSplitter, RawLine, check_line
from broker.batches.template_calls import TemplateBook
from workers.batches.budget import BatchEstimate

MAX_ERRORS = 100


class Validation:
    """The first pass: whether a batch may launch, and its estimate.

    Two kinds of problem are kept apart (`broker.batches.lines`); both lists are capped, as
    a 50,000-line file with a wrong url needs 100 examples, not 50,000. `fatal_seen` still
    fails the batch when the cap dropped every fatal one.
    """

    def __init__(self, endpoint: str, models: frozenset[str], max_lines: int,
                 max_line_bytes: int, estimate: BatchEstimate):
        self._endpoint = endpoint
        self._models = models
        self._max_lines = max_lines
        self._max_line_bytes = max_line_bytes
        self._splitter = LineSplitter(max_line_bytes)
        self._seen: set[str] = set()
        self.estimate = estimate
        self.fatal: list[LineError] = []
        self.invalid: list[LineError] = []
        self.fatal_seen = False
        self.total = self.valid = 0
        self.pending: list[InputLine] = []
        """Structurally valid lines fed but not `settle`d yet."""

    def feed(self, chunk: bytes) -> bool:
        """Check the structure of the lines `chunk` completes (each then waits in `pending`
        for `settle`); False once the file is refused whole (stop)."""
        return all(self._check(number, raw) for number, raw in self._splitter.feed(chunk))

    def end(self) -> None:
        """Check the last line, if the file does not end with a newline (`settle` next)."""
        for number, raw in self._splitter.end():
            self._check(number, raw)

    def settle(self, templates: TemplateBook) -> None:
        """Render the pending template lines (their templates loaded into `templates`),
        then count and estimate every pending line."""
        for parsed in self.pending:
            parsed = templates.render(parsed, self._models)
            if parsed.body is not None:
                self.valid += 1
                self.estimate.add(parsed.body)
            elif len(self.invalid) < MAX_ERRORS:
                # Reported in `errors` only if no line at all is valid (else: error file).
                self.invalid.append(LineError("invalid_request", parsed.line,
                                              parsed.problem or "", "body"))
        self.pending.clear()

    def errors(self) -> list[LineError] | None:
        """What fails the batch, or None when it may launch."""
        if self.total == 0:
            return [LineError("empty_file", 0, "The input file has no lines.")]
        if self.fatal or self.fatal_seen or self.valid == 0:
            return self.fatal or self.invalid
        return None

    def _check(self, number: int, raw: RawLine) -> bool:
        self.total += 1
        if self.total > self._max_lines:
            self.fatal.append(LineError("too_many_lines", number,
                                        f"The file has more than {self._max_lines} lines."))
            return False
        parsed = check_line(number, raw, self._endpoint, self._models, self._max_line_bytes)
        if isinstance(parsed, InputLine) and parsed.custom_id in self._seen:
            parsed = LineError("duplicate_custom_id", number, "The custom_id "
                               f"'{parsed.custom_id}' is not unique in the file.", "custom_id")
        if isinstance(parsed, LineError):
            self.fatal_seen = True
            if len(self.fatal) < MAX_ERRORS:
                self.fatal.append(parsed)
            return True
        if parsed.custom_id:  # a line too long to read may not show its custom_id
            self._seen.add(parsed.custom_id)
        self.pending.append(parsed)
        return True


class LineParser:
    """The second pass: the input lines of a validated file, after the first `skip` (those an
    earlier attempt launched are only counted, not parsed again). Template lines come back
    unrendered: the launcher renders them once their templates are loaded."""

    def __init__(self, endpoint: str, models: frozenset[str], max_line_bytes: int, skip: int):
        self._endpoint = endpoint
        self._models = models
        self._max_line_bytes = max_line_bytes
        self._splitter = LineSplitter(max_line_bytes)
        self._skip = skip

    def feed(self, chunk: bytes) -> list[InputLine]:
        """The lines `chunk` completes."""
        return self._parse(self._splitter.feed(chunk))

    def end(self) -> list[InputLine]:
        """The last line, if the file does not end with a newline."""
        return self._parse(self._splitter.end())

    def _parse(self, lines: list[tuple[int, RawLine]]) -> list[InputLine]:
        skipped = min(self._skip, len(lines))
        self._skip -= skipped
        parsed = []
        for number, raw in lines[skipped:]:
            line = check_line(number, raw, self._endpoint, self._models, self._max_line_bytes)
            assert isinstance(line, InputLine)  # the first pass refused everything else
            parsed.append(line)
        return parsed
