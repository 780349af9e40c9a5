"""Which partition of an ingress reply topic a result goes to, on the embedded broker.

Used only with `SLUICE_KAFKA_ENGINE=tansu`; on Apache Kafka replies go by key.

Why: an ingress instance reads every partition of its own reply topic and matches replies
by correlation id, so a reply may go to any partition. Keyed by correlation id, the
replies of one produce request scatter over all partitions, one small batch each. The
embedded broker (Tansu) lists a partition's whole history on every fetch that finds
records, so scattered batches cost it a listing of every partition on every fetch, and the
lists grow three times as fast. Replies produced within the same slot share one partition
(one batch), and the slots rotate so each partition still holds a fair share of the
history; Apache Kafka's own producer does the same for unkeyed records (KIP-480).

Only the ingress reply topics (`<prefix>replies.`) are treated so: a reply topic a caller
named keeps Kafka's keyed partitioning, which its readers may rely on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

PartitionsOf = Callable[[str], Awaitable[set[int]]]


class StickyReplyPartitions:
    """Picks the partition for a reply to an ingress reply topic, or None for keyed ones.

    Args:
        partitions_of: the topic's partition ids (`AIOKafkaProducer.partitions_for`).
        ingress_prefix: the name prefix of ingress reply topics.
        slot_s: how long replies keep going to the same partition.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        partitions_of: PartitionsOf,
        ingress_prefix: str,
        *,
        slot_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._partitions_of = partitions_of
        self._ingress_prefix = ingress_prefix
        self._slot_s = slot_s
        self._clock = clock

    async def pick(self, topic: str) -> int | None:
        """The partition for a reply sent now to `topic`; None means "by key"."""
        if not topic.startswith(self._ingress_prefix):
            return None
        partitions = sorted(await self._partitions_of(topic))
        slot = int(self._clock() / self._slot_s)
        return partitions[slot % len(partitions)]
