"""Provider rate-limit headers (OpenAI and Anthropic) and the simulator's sliding window."""

from __future__ import annotations

import pytest

from broker.budgets import parse_duration, parse_rate_limit_headers
from simulator.limits import SlidingWindowLimits


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("12ms", 0.012), ("1h2m3.5s", 3723.5), ("20", 20.0),
    ("0.5s", 0.5), ("", None), ("soon", None), ("1s junk", None),
])
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_openai_headers() -> None:
    signal = parse_rate_limit_headers({
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m30s", "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "12ms",
    })
    assert signal.limits == (500, 30000, 0, 0)
    assert signal.remaining == (0, 29000, 0, 0)
    assert signal.reset_s == pytest.approx((90, 0.012, 0, 0))
    assert signal.exhausted_for_s() == pytest.approx(90)
    assert signal.retry_after_s is None and signal.announced


def test_anthropic_headers_with_rfc3339_resets() -> None:
    now = 1_700_000_000.0
    signal = parse_rate_limit_headers({
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:40Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": "2023-11-14T22:13:30+00:00",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "retry-after": "7",
    }, now=now)
    assert signal.limits == (50, 0, 40000, 8000)
    assert signal.reset_s[0] == pytest.approx(20)
    assert signal.exhausted_for_s() == pytest.approx(10)
    assert signal.retry_after_s == 7


def test_retry_after_ms_wins() -> None:
    signal = parse_rate_limit_headers({"retry-after-ms": "1500", "retry-after": "2"})
    assert signal.retry_after_s == 1.5 and not signal.announced


def test_simulator_window_slides_and_answers_like_openai() -> None:
    limits = SlidingWindowLimits(rpm=3, tpm=100, window_s=10)
    for at in (0.0, 1.0, 2.0):
        assert limits.admit(at, 10)[0]
    admitted, headers = limits.admit(5.0, 10)
    named = {k.decode(): v.decode() for k, v in headers}
    assert not admitted
    assert named["x-ratelimit-limit-requests"] == "3"
    assert named["x-ratelimit-remaining-requests"] == "0"
    assert named["retry-after-ms"] == "5000"
    assert limits.admit(10.0, 10)[0]  # the call at 0.0 left the window
    assert not limits.admit(10.5, 95)[0]  # tokens: 30 in the window + 95 > 100
    assert limits.snapshot()["rate_limited"] == 2
