"""Clocks in seconds: the type the components take, and the one fake clock for tests.

Everything that expires, waits or rate-limits takes a clock argument: a callable returning
seconds (`time.monotonic` for durations, `time.time` where the value is shared across
processes). The fake lives here, beside the real ones, so that tests do not each write
their own: it returns a time that moves only when the test moves it.
"""

from __future__ import annotations

from collections.abc import Callable

MonotonicClock = Callable[[], float]
"""A clock in seconds, such as `time.monotonic` or `time.time`, or a `FakeClock`."""


class FakeClock:
    """A clock in seconds that moves only when told to, for tests.

    Call it for the current time. Move it with `advance`, or set `now` directly (a test
    may also write `clock.now += seconds`). A subclass may turn `now` into a property to
    tie the clock to something else; `__call__` and `advance` go through it.

    Attributes:
        now: The current time in seconds.
    """

    def __init__(self, now: float = 1000.0) -> None:
        """Start the clock.

        Args:
            now: The time to start at, in seconds.
        """
        self.now = now

    def __call__(self) -> float:
        """The current time.

        Returns:
            The current time in seconds.
        """
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward.

        Args:
            seconds: How far to move it.
        """
        self.now += seconds
