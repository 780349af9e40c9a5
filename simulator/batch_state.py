"""What both simulated batch APIs share: the files and batches of each app, and when a
batch ends.

A batch is `in_progress` for `BatchAPIState.in_progress_s` seconds (the native lane's
tests set it), then ends with every request answered. A cancel ends the batch at its next
read: the share of requests the elapsed time covers is answered, the rest cancelled.
Progress is worked out when a batch is read, so nothing runs in the background. What
differs per API (how a request is answered, what an ended batch holds) is its `BatchKind`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from simulator.asgi import Send
from simulator.routes import Request

if TYPE_CHECKING:
    from simulator.app import SimulatorApp


@dataclass(slots=True)
class SimulatedFile:
    """An uploaded input file, or a batch's output or error file."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def body(self) -> dict[str, Any]:
        """OpenAI's file object."""
        return {"id": self.id, "object": "file", "bytes": len(self.content),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose}


@dataclass(slots=True)
class SimulatedBatch:
    """One batch of either API; `requests` are OpenAI lines or Anthropic requests."""

    id: str
    api: str  # "openai" or "anthropic"
    requests: list[dict[str, Any]]
    created_at: float
    endpoint: str = ""
    input_file_id: str = ""
    metadata: dict[str, str] | None = None
    status: str = "in_progress"
    cancel_at: float | None = None
    ended_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class BatchAPIState:
    """Files and batches of one simulator app."""

    in_progress_s: float = 2.0
    files: dict[str, SimulatedFile] = field(default_factory=dict)
    batches: dict[str, SimulatedBatch] = field(default_factory=dict)


_STATES: WeakKeyDictionary[SimulatorApp, BatchAPIState] = WeakKeyDictionary()


def batch_state(app: SimulatorApp) -> BatchAPIState:
    """The batch API state of `app` (made on first use; set `in_progress_s` on it)."""
    state = _STATES.get(app)
    if state is None:
        state = _STATES[app] = BatchAPIState()
    return state


def new_id(prefix: str) -> str:
    """A fresh id in the provider's style (`batch_…`, `msgbatch_…`, `file-…`)."""
    return f"{prefix}{os.urandom(12).hex()}"


Answer = Callable[["SimulatorApp", dict[str, Any]], dict[str, Any]]
"""One request of a batch answered: an API's result line."""
Close = Callable[[BatchAPIState, SimulatedBatch, list[dict[str, Any]], list[dict[str, Any]]],
                 None]
"""Writes an ended batch's results from its answered lines and its skipped requests."""


@dataclass(frozen=True, slots=True)
class BatchKind:
    """One API's batches: its name on `SimulatedBatch.api`, and how it answers and closes."""

    api: str
    answer: Answer
    close: Close

    def advance(self, app: SimulatorApp, batch: SimulatedBatch) -> None:
        """Bring `batch` up to now: end it once its time is up or it was cancelled."""
        state = batch_state(app)
        now = time.time()
        if batch.ended_at is not None:
            return
        if batch.cancel_at is None and now < batch.created_at + state.in_progress_s:
            return
        until = batch.cancel_at if batch.cancel_at is not None else now
        share = min(1.0, (until - batch.created_at) / state.in_progress_s)
        done = int(len(batch.requests) * share)
        answered = [self.answer(app, request) for request in batch.requests[:done]]
        batch.ended_at = now
        self.close(state, batch, answered, batch.requests[done:])

    def find(self, app: SimulatorApp, request: Request) -> SimulatedBatch | None:
        """The batch the path names, brought up to now; None if this API has no such batch."""
        batch = batch_state(app).batches.get(request.params["batch_id"])
        if batch is None or batch.api != self.api:
            return None
        self.advance(app, batch)
        return batch

    def cancel(self, app: SimulatorApp, request: Request) -> SimulatedBatch | None:
        """The batch the path names, asked to stop unless it has ended; None if unknown."""
        batch = self.find(app, request)
        if batch is not None and batch.ended_at is None and batch.cancel_at is None:
            batch.cancel_at = time.time()
        return batch

    def page(self, app: SimulatorApp, request: Request,
             cursor: str) -> tuple[list[SimulatedBatch], bool]:
        """The API's batches, newest first, after the cursor batch, and whether more exist."""
        batches = [b for b in reversed(batch_state(app).batches.values()) if b.api == self.api]
        after = request.query(cursor)
        if after is not None:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query("limit") or 20)
        for batch in batches[:limit]:
            self.advance(app, batch)
        return batches[:limit], len(batches) > limit


def page_fields(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """The fields both APIs page a list with: the items, the ids at its ends, `has_more`."""
    return {"data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


async def send_download(send: Send, content: bytes, content_type: bytes) -> None:
    """Send a file's bytes (an output file, a results stream) as they are."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(content)).encode())]})
    await send({"type": "http.response.body", "body": content})
