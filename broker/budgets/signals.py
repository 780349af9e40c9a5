"""What providers say about their limits: OpenAI `x-ratelimit-*`, Anthropic
`anthropic-ratelimit-*`, and `retry-after`.

OpenAI sends limits and remaining counts per request and per token, and the time until
each bucket is full again as a Go-style duration (`1s`, `6m0s`, `12ms`, `1h2m3.5s`).
Anthropic sends the same per requests, tokens, input and output tokens, with resets as
RFC 3339 times. `retry-after` is in seconds (`retry-after-ms` in milliseconds).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from broker.budgets.algorithm import Vector

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")


def parse_duration(value: str) -> float | None:
    """Seconds in a Go-style duration (`6m0s` → 360.0); a bare number is seconds."""
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def parse_reset(value: str, now: float | None = None) -> float | None:
    """Seconds until a reset given as a duration or an RFC 3339 time (Anthropic)."""
    seconds = parse_duration(value)
    if seconds is not None:
        return seconds
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class RateLimitSignal:
    """The limits, remaining counts and resets one response announced (None: not sent).

    Vectors are in `algorithm.DIMENSIONS` order; 0 means "not announced".
    """

    limits: Vector
    remaining: Vector
    reset_s: Vector
    retry_after_s: float | None

    @property
    def announced(self) -> bool:
        """Whether any limit was announced."""
        return any(value > 0 for value in self.limits)

    def exhausted_for_s(self) -> float:
        """How long until a dimension whose remaining count reached 0 has room again."""
        waits = [self.reset_s[i] for i in range(4)
                 if self.limits[i] > 0 and self.remaining[i] <= 0]
        return max(waits, default=0.0)


def _number(headers: Mapping[str, str], name: str) -> float:
    try:
        return max(0.0, float(headers.get(name, "")))
    except ValueError:
        return 0.0


def parse_rate_limit_headers(
    headers: Mapping[str, str], now: float | None = None
) -> RateLimitSignal:
    """Read OpenAI and Anthropic rate-limit headers (names lower-cased)."""
    limits, remaining, resets = [0.0] * 4, [0.0] * 4, [0.0] * 4
    for i, kind in enumerate(_KINDS):
        for prefix, limit_name, left_name, reset_name in (
            ("x-ratelimit-", f"limit-{kind}", f"remaining-{kind}", f"reset-{kind}"),
            ("anthropic-ratelimit-", f"{kind}-limit", f"{kind}-remaining", f"{kind}-reset"),
        ):
            if prefix + limit_name not in headers:
                continue
            limits[i] = _number(headers, prefix + limit_name)
            remaining[i] = _number(headers, prefix + left_name)
            reset = headers.get(prefix + reset_name)
            resets[i] = (parse_reset(reset, now) or 0.0) if reset else 0.0
    retry_after = None
    if "retry-after-ms" in headers:
        retry_after = _number(headers, "retry-after-ms") / 1000
    elif "retry-after" in headers:
        retry_after = parse_duration(headers["retry-after"])
    return RateLimitSignal(_v(limits), _v(remaining), _v(resets), retry_after)


def _v(values: list[float]) -> Vector:
    return (values[0], values[1], values[2], values[3])
