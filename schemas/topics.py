"""Topic names. One prefix (default `sluice.`) lets several environments share a cluster."""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.messages import Lane

_TOPIC_COMPONENT = re.compile(r"^[A-Za-z0-9._-]{1,180}$")


def is_valid_topic_component(name: str) -> bool:
    """Whether `name` can be used inside a Kafka topic name unchanged."""
    return bool(_TOPIC_COMPONENT.match(name))


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic sluicegate reads or writes, derived from one prefix."""

    prefix: str = "sluice."

    def requests(self, model: str, lane: Lane = Lane.INTERACTIVE) -> str:
        """Where requests for a logical model wait, per lane."""
        base = f"{self.prefix}requests.{model}"
        return base if lane is Lane.INTERACTIVE else f"{base}.batch"

    def worker_group(self, model: str, lane: Lane = Lane.INTERACTIVE) -> str:
        """The consumer group of the workers serving `model`'s request topic of `lane`
        (what queue depth is measured against: its lag on that topic)."""
        base = f"{self.prefix}workers.{model}"
        return base if lane is Lane.INTERACTIVE else f"{base}.batch"

    @property
    def requests_pattern(self) -> str:
        """Regular expression matching every request topic (both lanes)."""
        return "^" + re.escape(f"{self.prefix}requests.") + r".+"

    @property
    def results(self) -> str:
        """Every final result: the replica of record for polling and batches."""
        return f"{self.prefix}results"

    @property
    def usage(self) -> str:
        """One usage event per provider call that consumed tokens."""
        return f"{self.prefix}usage"

    @property
    def dead_letter(self) -> str:
        """Poison and exhausted messages, with the reason."""
        return f"{self.prefix}dead-letter"

    def retry(self, model: str) -> str:
        """Requests of `model` waiting for a delayed retry (not a request topic)."""
        return f"{self.prefix}retry.{model}"

    @property
    def cancels(self) -> str:
        """Cancellation markers, keyed by request id (compacted semantics)."""
        return f"{self.prefix}cancels"

    def replies(self, ingress_id: str) -> str:
        """Results for callers waiting on one ingress instance."""
        return f"{self.prefix}replies.{ingress_id}"
