"""Anthropic's prompt cache, simulated: prefixes marked `cache_control` are remembered.

A call reads from the cache the longest of its marked prefixes seen before (and still
fresh), and writes the rest up to its last mark; so the first call with a prefix reports
`cache_creation_input_tokens` and the next ones `cache_read_input_tokens`, as Anthropic's
do. Entries live `ttl_s` (five minutes by default, an hour when the mark says `"1h"`)
and every hit refreshes them. What Anthropic does and this does not: a minimum cacheable
length (1,024 tokens or more by model); caches are kept per model, as here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_TTL_S = 300.0
_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """One `cache_control` mark: the prefix it ends (as a digest), its tokens, its life."""

    digest: bytes
    tokens: int
    ttl_s: float = DEFAULT_TTL_S


@dataclass(frozen=True, slots=True)
class CacheUse:
    """The cache's share of one call's input tokens."""

    read_tokens: int = 0
    written_tokens: int = 0


class PromptCache:
    """Remembered prefixes with their expiry, the oldest dropped past `_MAX_ENTRIES`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def use(self, breakpoints: Sequence[Breakpoint]) -> CacheUse:
        """Read the longest fresh prefix among `breakpoints` (in prompt order), write the rest.

        Returns:
            How many of the call's input tokens were read from and written to the cache.
        """
        if not breakpoints:
            return CacheUse()
        now = self._clock()
        read = 0
        for point in breakpoints:
            expiry = self._expiry.get(point.digest)
            if expiry is not None and expiry > now:
                read = max(read, point.tokens)
        for point in breakpoints:
            self._expiry[point.digest] = now + point.ttl_s
            self._expiry.move_to_end(point.digest)
        while len(self._expiry) > _MAX_ENTRIES:
            self._expiry.popitem(last=False)
        last = max(point.tokens for point in breakpoints)
        return CacheUse(read_tokens=read, written_tokens=max(0, last - read))
