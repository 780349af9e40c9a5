"""Cached answers in memory: an LRU of the answers ingress served or read lately.

It stands in front of PostgreSQL (`broker.stores.response_cache`): a repeated request is answered
from memory, without a database round trip. An entry is served only until its
`expires_at`, the same instant the database row stops being served.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def utc_now() -> datetime:
    """The current time in UTC (the default clock of the cache)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer kept for a cache key: the completion and what producing it used."""

    key: str
    tenant: str
    model: str
    completion: dict[str, Any]
    """The `chat.completion` as the provider answered it (JSON)."""
    input_tokens: int
    output_tokens: int
    expires_at: datetime
    request_id: str
    """The request whose answer this is."""


class AnswerLRU:
    """At most `max_entries` answers, least recently used evicted first.

    Args:
        max_entries: the bound (each entry holds one completion).
        clock: the current time; tests pass their own.
    """

    def __init__(self, max_entries: int = 10_000,
                 clock: Callable[[], datetime] = utc_now):
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedAnswer | None:
        """The unexpired answer for `key`, or None (an expired one is dropped)."""
        answer = self._entries.get(key)
        if answer is None:
            return None
        if answer.expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, answer: CachedAnswer) -> None:
        """Keep `answer` (unless already expired), evicting the least recently used."""
        if answer.expires_at <= self._clock():
            return
        self._entries[answer.key] = answer
        self._entries.move_to_end(answer.key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
