"""Reconciliation: does the ledger hold exactly the usage events the usage topic holds?

Reads the usage topic (from its beginning, or from a time via `offsets_for_times`) up to
the end offsets taken when the check starts, with no consumer group (so it moves nobody's
offsets), and compares event ids with `usage_events`:

- missing: an event on the topic with no row — a lost write (expected 0);
- duplicate: one provider call (same request, deployment and provider request id) billed
  under more than one event id — a double charge (expected 0). A redelivered *event* is not
  a duplicate; it is counted as `redelivered` and is harmless (the insert ignores it).

A check run while the ledger is behind reports the events it has not recorded yet as
missing; run it again once the ledger has caught up (its lag is zero).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.errors import BrokerUnavailable
from broker.kafka import (
    Consumer,
    KafkaError,
    TopicPartition,
    new_consumer,
    partition_ids,
    read_present,
    topics_for,
)
from broker.settings import KafkaSettings
from broker.stores.database import database_errors
from broker.stores.tables import usage_events
from schemas import UsageEvent

_CHUNK = 10_000


@dataclass
class Reconciliation:
    """What the check found."""

    records: int = 0
    events: int = 0
    redelivered: int = 0
    poison: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str, list[str]]] = field(default_factory=list)
    """(request id, provider request id, event ids billed for that one call)."""

    @property
    def ok(self) -> bool:
        """No missing and no duplicate events."""
        return not self.missing and not self.duplicates


async def _read(
    kafka: KafkaSettings, consumer: Consumer, topic: str, since: datetime | None
) -> list[bytes]:
    partitions = await partition_ids(kafka, topic, missing_ok=True)
    tps = [TopicPartition(topic, partition) for partition in partitions]
    if not tps:
        return []
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    since_ms = int(since.timestamp() * 1000) if since is not None else -1
    if since is None:
        await consumer.seek_to_beginning(*tps)
    else:
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            position = found.get(tp)
            # "No such record" is None on Apache Kafka, timestamp -1 on some compatibles.
            missing = position is None or position.timestamp < 0
            consumer.seek(tp, ends[tp] if missing else position.offset)
    # The timestamp filter keeps `since` exact where a broker's time index is coarse.
    return [record.value async for record in read_present(consumer, tps)
            if record.timestamp >= since_ms and record.value is not None]


async def reconcile(
    kafka: KafkaSettings, engine: AsyncEngine, since: datetime | None = None
) -> Reconciliation:
    """Compare the usage topic (from `since`, or its beginning) with the ledger's rows.

    Raises:
        BrokerUnavailable: Kafka cannot be reached.
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    topic = topics_for(kafka).usage
    consumer = new_consumer(kafka, client_id="sluice-reconcile", group_id=None, background=True)
    try:
        await consumer.start()
        values = await _read(kafka, consumer, topic, since)
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot read {topic} from {kafka.kafka_bootstrap}") from exc
    finally:
        await consumer.stop()
    report = Reconciliation(records=len(values))
    ids: Counter[str] = Counter()
    for value in values:
        try:
            event = UsageEvent.model_validate_json(value)
        except ValueError:
            report.poison += 1  # dead-lettered by the ledger; not a usage row by design
            continue
        ids[event.event_id] += 1
    report.events = len(ids)
    report.redelivered = sum(ids.values()) - len(ids)
    recorded = await _recorded(engine, list(ids))
    report.missing = sorted(event_id for event_id in ids if event_id not in recorded)
    report.duplicates = await _duplicates(engine, list(ids))
    return report


async def _recorded(engine: AsyncEngine, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    with database_errors(engine):
        async with engine.connect() as connection:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                rows = await connection.execute(
                    select(usage_events.c.event_id).where(usage_events.c.event_id.in_(chunk))
                )
                found.update(rows.scalars())
    return found


async def _duplicates(engine: AsyncEngine, ids: Sequence[str]) -> list[tuple[str, str, list[str]]]:
    c = usage_events.c
    call = (c.request_id, c.deployment, c.provider_request_id)
    # A call whose events fall in two chunks is found twice: keep it once.
    duplicates: dict[tuple[str, str], list[str]] = {}
    with database_errors(engine):
        async with engine.connect() as connection:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                calls = (
                    select(*call).where(c.event_id.in_(chunk), c.provider_request_id.isnot(None))
                ).subquery()
                statement = (
                    select(c.request_id, c.provider_request_id, func.array_agg(c.event_id))
                    .where(tuple_(*call).in_(select(*calls.c)))
                    .group_by(*call)
                    .having(func.count() > 1)
                )
                for row in await connection.execute(statement):
                    duplicates[(row[0], row[1])] = sorted(row[2])
    return [(request, provider, events) for (request, provider), events in
            sorted(duplicates.items())]
