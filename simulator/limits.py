"""Rate limits as providers enforce them: at most N requests and T tokens in any window.

A sliding window log (every accepted call's time and tokens), so the simulator is the
strict judge a budget is measured against: unlike a bucket, it forgives no burst. A call
that would exceed either limit is refused with 429, `retry-after` (when enough of the
window has slid by) and the limit headers of the format asked (OpenAI's `x-ratelimit-*`,
Anthropic's `anthropic-ratelimit-*`, Azure's subset); refused calls do not count. Every
answer carries the headers, as the providers' do, so clients can learn the real limits.
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


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """One call judged: admitted or not, and the state of the window after it.

    `requests` and `tokens` are `(limit, remaining)`, None when that limit is off;
    `full_in_s` is how long until the window is empty again (OpenAI's "reset").
    """

    admitted: bool
    wait_s: float
    full_in_s: float
    requests: tuple[int, int] | None
    tokens: tuple[int, int] | None


def openai_limit_headers(verdict: LimitVerdict) -> list[tuple[bytes, bytes]]:
    """OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`."""
    headers: list[tuple[bytes, bytes]] = []
    reset = _duration(verdict.full_in_s).encode()
    for kind, counts in (("requests", verdict.requests), ("tokens", verdict.tokens)):
        if counts is not None:
            headers += [(f"x-ratelimit-limit-{kind}".encode(), str(counts[0]).encode()),
                        (f"x-ratelimit-remaining-{kind}".encode(), str(counts[1]).encode()),
                        (f"x-ratelimit-reset-{kind}".encode(), reset)]
    return headers


def retry_headers(wait_s: float) -> list[tuple[bytes, bytes]]:
    """`retry-after` (whole seconds, as HTTP has it) and OpenAI's finer `retry-after-ms`."""
    return [(b"retry-after", str(max(0, math.ceil(wait_s))).encode()),
            (b"retry-after-ms", str(max(0, math.ceil(wait_s * 1000))).encode())]


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

    def judge(self, now: float, tokens: int) -> LimitVerdict:
        """Count a call of `tokens` at `now` if it fits; what each format's headers report."""
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
        full_in = self._calls[0][0] + self.window_s - now if self._calls else 0.0
        return LimitVerdict(
            admitted=admitted, wait_s=wait, full_in_s=max(full_in, 0.0),
            requests=(self.rpm, max(0, self.rpm - len(self._calls))) if self.rpm else None,
            tokens=(self.tpm, max(0, self.tpm - self._tokens)) if self.tpm else None)

    def admit(self, now: float, tokens: int) -> tuple[bool, list[tuple[bytes, bytes]]]:
        """Count a call of `tokens` at `now` if it fits; OpenAI's headers to answer with."""
        verdict = self.judge(now, tokens)
        headers = openai_limit_headers(verdict)
        if not verdict.admitted:
            headers += retry_headers(verdict.wait_s)
        return verdict.admitted, headers

    def snapshot(self) -> dict[str, int | float]:
        """Counters for `/stats`."""
        return {"rpm": self.rpm, "tpm": self.tpm, "window_s": self.window_s,
                "accepted": self.accepted, "accepted_tokens": self.accepted_tokens,
                "rate_limited": self.refused}
