"""Circuit breakers: open on a streak or an error rate, probe after cool-down, close on success."""

from __future__ import annotations

from broker.clock import FakeClock
from broker.config import BreakerConfig
from workers.inference.breakers import BreakerBoard, BreakerState, CircuitBreaker

CONFIG = BreakerConfig(consecutive_failures=3, error_rate=0.5, window_s=10, min_calls=6,
                       cooldown_s=5)


def test_opens_after_consecutive_failures_and_rejects_calls() -> None:
    breaker = CircuitBreaker(CONFIG, FakeClock())
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_success_resets_the_streak() -> None:
    breaker = CircuitBreaker(CONFIG, FakeClock())
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
        breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_opens_on_error_rate_over_the_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock)
    for _ in range(3):  # 50% failures, never two in a row
        breaker.record_success()
        breaker.record_failure()
        clock.advance(1)
    assert breaker.state is BreakerState.OPEN


def test_old_calls_leave_the_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    clock.advance(30)  # the failures above are out of the window now
    for _ in range(3):
        breaker.record_success()
        breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["window_calls"] == 7


def test_half_open_lets_one_probe_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.2)
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_failed_probe_reopens_for_another_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and breaker.times_opened == 2
    assert not breaker.allow()
    clock.advance(5)
    assert breaker.allow()


def test_a_lost_probe_does_not_wedge_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5)
    assert breaker.allow()  # this probe's task dies; no outcome is ever recorded
    clock.advance(5)
    assert breaker.allow()


def test_board_snapshot_names_every_deployment() -> None:
    clock = FakeClock()
    board = BreakerBoard(CONFIG, ["a", "b"], clock)
    for _ in range(3):
        board["b"].record_failure()
    snapshot = board.snapshot()
    assert snapshot["a"]["state"] == "closed"
    assert snapshot["b"]["state"] == "open" and snapshot["b"]["half_open_in_s"] == 5
