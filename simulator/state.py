"""What the simulator has done so far, served by `GET /stats`."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from schemas import Usage


class SimulatorState:
    """Counters of one simulator app (one per process; the event loop is single-threaded).

    New features add their own counters here and to `snapshot()`; readers of `/stats`
    must ignore keys they do not know.
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self.requests = 0
        self.succeeded = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.errors_by_status: Counter[int] = Counter()
        self.requests_by_model: Counter[str] = Counter()
        self.requests_by_format: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.random = random.Random(seed)

    def record_request(self, format_name: str) -> None:
        """Count a request in one wire format (`openai`, `azure`, `anthropic`, `gemini`)."""
        self.requests += 1
        self.requests_by_format[format_name] += 1

    def record_success(self, usage: Usage | None) -> None:
        """Count a chat completion answered with 200."""
        self.succeeded += 1
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens

    def record_error(self, status: int) -> None:
        """Count a chat completion answered with an error status."""
        self.errors_by_status[status] += 1

    def _detail_counters(self) -> dict[str, Any]:
        # Only once a fault was injected or another format than OpenAI's served, so the
        # stats of a healthy OpenAI-only simulator stay as they were.
        counters: dict[str, Any] = {}
        if self.injected or set(self.requests_by_format) - {"openai"}:
            counters["requests_by_model"] = dict(sorted(self.requests_by_model.items()))
            counters["requests_by_format"] = dict(sorted(self.requests_by_format.items()))
        if self.injected:
            counters["injected"] = dict(sorted(self.injected.items()))
        return counters

    def record_injected(self, kind: str) -> None:
        """Count a fault injected on purpose (`error`, `timeout` or `window`)."""
        self.injected[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data (status codes become string keys)."""
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "errors_by_status": {
                str(status): count for status, count in sorted(self.errors_by_status.items())
            },
            **self._detail_counters(),
        }
