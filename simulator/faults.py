"""Deciding which calls the simulator fails on purpose, and how.

Kept apart from the ASGI app so the decision is a pure function of the settings, the
seeded random source and the time since start (tests pin all three).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from simulator.settings import Faults

_MESSAGES = {
    429: "Rate limit reached (simulated); retry after a moment.",
    500: "The server had an error while processing your request (simulated).",
    502: "Bad gateway (simulated).",
    503: "The engine is currently overloaded (simulated).",
    504: "Upstream timed out (simulated).",
    529: "Overloaded (simulated).",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure: answer `status`, after hanging `hang_s` seconds if set."""

    kind: str
    status: int
    hang_s: float = 0.0
    retry_after_s: float | None = None

    @property
    def message(self) -> str:
        """An error message in the style of the real provider."""
        return _MESSAGES.get(self.status, f"Simulated failure {self.status}.")


def choose_fault(faults: Faults, rng: random.Random, elapsed_s: float) -> Fault | None:
    """The fault for a call made `elapsed_s` after start, or None to answer normally.

    Windows first (they are certain), then a hang, then a random error status.
    """
    for window in faults.windows:
        if window.start_s <= elapsed_s < window.end_s:
            return Fault("window", window.status, retry_after_s=window.retry_after_s)
    if faults.timeout_rate > 0 and rng.random() < faults.timeout_rate:
        return Fault("timeout", 504, hang_s=faults.hang_s)
    if faults.error_rate > 0 and rng.random() < faults.error_rate:
        status = faults.error_statuses[rng.randrange(len(faults.error_statuses))]
        return Fault("error", status, retry_after_s=0.0 if status == 429 else None)
    return None
