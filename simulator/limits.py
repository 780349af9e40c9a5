"""Rate limits as providers enforce them: at most N requests and T tokens in any window.

A sliding window log (every accepted call's time and tokens), so the simulator is the
strict judge a budget is measured against: unlike a bucket, it forgives no burst. A call
that would exceed either limit is refused with 429, `retry-after` (when enough of the
window has slid by) and OpenAI's `x-ratelimit-*` headers; refused calls do not count.
Every answer carries the headers, as OpenAI's do, so clients can learn the real limits.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


def _duration(seconds: float) -> str:
    """OpenAI's duration format: `12ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


@dataclass
class SlidingWindowLimits:
    """Request and token limits over a sliding window of `window_s` seconds (0 = none)."""

    rpm: int = 0
    tpm: int = 0
    window_s: float = 60.0
    _calls: deque[tuple[float, int]] = field(default_factory=deque)
    _tokens: int = 0
    accepted: int = 0
    accepted_tokens: int = 0
    refused: int = 0

    @property
    def enabled(self) -> bool:
        """Whether any limit is set."""
        return self.rpm > 0 or self.tpm > 0

    def _slide(self, now: float) -> None:
        while self._calls and self._calls[0][0] <= now - self.window_s:
            self._tokens -= self._calls.popleft()[1]

    def _wait_s(self, now: float, tokens: int) -> float:
        """Seconds until a call of `tokens` would fit."""
        wait = 0.0
        if self.rpm > 0 and len(self._calls) >= self.rpm:
            wait = self._calls[len(self._calls) - self.rpm][0] + self.window_s - now
        if self.tpm > 0 and self._tokens + tokens > self.tpm:
            excess = self._tokens + tokens - self.tpm
            for at, spent in self._calls:
                excess -= spent
                if excess <= 0:
                    wait = max(wait, at + self.window_s - now)
                    break
        return max(wait, 0.0)

    def admit(self, now: float, tokens: int) -> tuple[bool, list[tuple[bytes, bytes]]]:
        """Count a call of `tokens` at `now` if it fits; the headers to answer with."""
        self._slide(now)
        wait = self._wait_s(now, tokens)
        admitted = wait <= 0
        if admitted:
            self._calls.append((now, tokens))
            self._tokens += tokens
            self.accepted += 1
            self.accepted_tokens += tokens
        else:
            self.refused += 1
        headers = self._headers(now)
        if not admitted:
            headers += [(b"retry-after", str(max(1, math.ceil(wait))).encode()),
                        (b"retry-after-ms", str(math.ceil(wait * 1000)).encode())]
        return admitted, headers

    def _headers(self, now: float) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        oldest = self._calls[0][0] + self.window_s - now if self._calls else 0.0
        for kind, limit, used in (("requests", self.rpm, len(self._calls)),
                                  ("tokens", self.tpm, self._tokens)):
            if limit > 0:
                headers += [
                    (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                    (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, limit - used)).encode()),
                    (f"x-ratelimit-reset-{kind}".encode(), _duration(oldest).encode()),
                ]
        return headers

    def snapshot(self) -> dict[str, int | float]:
        """Counters for `/stats`."""
        return {"rpm": self.rpm, "tpm": self.tpm, "window_s": self.window_s,
                "accepted": self.accepted, "accepted_tokens": self.accepted_tokens,
                "rate_limited": self.refused}
