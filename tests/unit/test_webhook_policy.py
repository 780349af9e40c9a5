"""Retry verdicts and delays, and the bounded in-memory schedule."""

from __future__ import annotations

import random

from broker.webhooks.settings import WebhookSettings
from workers.deliver.policy import (
    AttemptOutcome,
    Verdict,
    parse_retry_after,
    retry_delay_s,
    verdict,
)
from workers.deliver.schedule import Schedule

SETTINGS = WebhookSettings(webhook_min_backoff_s=2, webhook_max_backoff_s=60,
                           webhook_max_retry_after_s=600)


def test_verdicts() -> None:
    assert verdict(AttemptOutcome(status_code=204), 1, 3) is Verdict.SUCCEEDED
    assert verdict(AttemptOutcome(status_code=410), 1, 3) is Verdict.DISABLE
    assert verdict(AttemptOutcome(status_code=302), 1, 3) is Verdict.RETRY  # 3xx is a failure
    assert verdict(AttemptOutcome(status_code=500), 3, 3) is Verdict.FAILED
    assert verdict(AttemptOutcome(error="timeout"), 1, 3) is Verdict.RETRY
    assert verdict(AttemptOutcome(error="refused", refused=True), 1, 3) is Verdict.FAILED


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    delays = [retry_delay_s(AttemptOutcome(status_code=500), n, SETTINGS, rng) for n in (1, 2, 3)]
    assert 1 <= delays[0] <= 2 and 2 <= delays[1] <= 4 and 4 <= delays[2] <= 8
    assert 30 <= retry_delay_s(AttemptOutcome(status_code=500), 20, SETTINGS, rng) <= 60


def test_retry_after_is_honoured_on_its_statuses_only() -> None:
    rng = random.Random(1)
    for status in (429, 502, 503, 504):
        outcome = AttemptOutcome(status_code=status, retry_after_s=120)
        assert retry_delay_s(outcome, 1, SETTINGS, rng) == 120
    assert retry_delay_s(AttemptOutcome(status_code=500, retry_after_s=120), 1, SETTINGS, rng) < 3
    capped = AttemptOutcome(status_code=429, retry_after_s=10**6)
    assert retry_delay_s(capped, 1, SETTINGS, rng) == 600


def test_parse_retry_after() -> None:
    assert parse_retry_after("30", 0) == 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == 10
    assert parse_retry_after("soon", 0) is None and parse_retry_after(None, 0) is None


def test_schedule_is_bounded_and_ordered() -> None:
    now = [100.0]
    schedule = Schedule(2, clock=lambda: now[0])
    assert schedule.add("b", 5) and schedule.add("a", 1)
    assert not schedule.add("c") and not schedule.add("a")  # full; already there
    assert schedule.pop_due(10) == [] and schedule.wait_s() == 1
    now[0] = 106.0
    assert schedule.pop_due(1) == ["a"] and schedule.pop_due(10) == ["b"]
    assert schedule.wait_s() is None and schedule.room == 2
