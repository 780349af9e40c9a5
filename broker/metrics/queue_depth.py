"""Queue depth per model and lane: the worker groups' consumer lag, as a gauge.

Measured with `broker.kafka.lag.consumer_lag` (end offsets minus the group's committed
offsets), which reads from outside the groups and never joins them. A measurement costs
a few Kafka round trips per group, so it is cached: however often Prometheus (or several
of them) scrapes, Kafka is asked at most once per `max_age_s`. The ingress measures it on
scrape, for every configured model; a failed measurement leaves the last values and logs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from broker.errors import BrokerUnavailable
from broker.kafka import KafkaError
from broker.kafka.lag import consumer_lag
from broker.metrics.instruments import QUEUE_DEPTH
from broker.settings import KafkaSettings
from schemas import Lane, Topics

log = logging.getLogger("sluice.metrics")

DEFAULT_MAX_AGE_S = 5.0


class QueueDepth:
    """Keeps `sluice_queue_depth_messages` current for `models`, at most `max_age_s` old."""

    def __init__(self, kafka: KafkaSettings, models: Iterable[str], *,
                 max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        self._kafka = kafka
        topics = Topics(kafka.topic_prefix)
        self._groups = {
            Topics(kafka.topic_prefix).worker_group(model, lane): (model, lane,
                                                            topics.requests(model, lane))
            for model in models for lane in Lane
        }
        self._max_age_s = max_age_s
        self._measured_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Measure again if the last measurement is older than `max_age_s`; never raises
        for Kafka being away (the gauges keep their last values)."""
        async with self._lock:
            now = time.monotonic()
            if self._measured_at is not None and now - self._measured_at < self._max_age_s:
                return
            self._measured_at = now
            groups = {group: topic for group, (_, _, topic) in self._groups.items()}
            try:
                lags = await consumer_lag(self._kafka, groups)
            except (BrokerUnavailable, KafkaError, OSError) as exc:
                log.warning("queue depth not measured (%s); the gauges keep their last values",
                            exc)
                return
            for lag in lags:
                model, lane, topic = self._groups[lag.group]
                QUEUE_DEPTH.labels(model, lane.value, topic, lag.group).set(lag.lag)
