"""What one attempt's outcome means, and when to try again (Standard Webhooks rules).

2xx is success. 410 Gone disables the URL. Every other answer (3xx included: redirects are
never followed) and every network failure is retried with exponential backoff and jitter,
at least as late as a `Retry-After` on 429/502/503/504 asks, until the attempts run out.
A URL refused by the SSRF policy is not retried: the same answer would come back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

from broker.webhooks.settings import WebhookSettings

RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})


class Verdict(StrEnum):
    """What to do with a delivery after one attempt."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"  # no attempts left, or retrying cannot help
    DISABLE = "disable"  # 410: fail it and disable the URL


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What happened on the wire in one attempt."""

    status_code: int | None = None
    error: str | None = None
    address: str | None = None  # the pinned address connected to
    retry_after_s: float | None = None
    refused: bool = False  # the SSRF policy refused the URL; nothing was sent
    duration_ms: float = 0.0


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now_epoch)


def verdict(outcome: AttemptOutcome, attempt: int, attempt_limit: int) -> Verdict:
    """The verdict after attempt number `attempt` (1-based) of at most `attempt_limit`."""
    status = outcome.status_code
    if status is not None and 200 <= status < 300:
        return Verdict.SUCCEEDED
    if status == 410:
        return Verdict.DISABLE
    if outcome.refused or attempt >= attempt_limit:
        return Verdict.FAILED
    return Verdict.RETRY


def retry_delay_s(
    outcome: AttemptOutcome, attempt: int, settings: WebhookSettings, rng: random.Random
) -> float:
    """How long to wait after failed attempt number `attempt` (1-based).

    Exponential, with jitter in the upper half of the step so retries of many deliveries
    that failed together (a receiver outage) spread out instead of arriving as one wave.
    """
    step = min(settings.webhook_min_backoff_s * 2 ** (attempt - 1), settings.webhook_max_backoff_s)
    delay: float = step * rng.uniform(0.5, 1.0)
    if outcome.status_code in RETRY_AFTER_STATUSES and outcome.retry_after_s is not None:
        delay = max(delay, min(outcome.retry_after_s, settings.webhook_max_retry_after_s))
    return delay
