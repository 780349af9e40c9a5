"""`sluice ledger reconcile`: the usage topic against the ledger's rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.kafka import topics_for
from broker.settings import KafkaSettings
from broker.stores.tables import usage_events
from sluice.cli import main
from tests.integration.test_ledger import (
    _equals,
    eventually,
    produce,
    running_ledger,
    usage,
    usage_count,
)
from workers.ledger.reconcile import reconcile

pytestmark = pytest.mark.integration



async def test_reconcile_reports_missing_and_duplicate_events(
    kafka_settings: KafkaSettings, engine: AsyncEngine
) -> None:
    events = [usage(f"use_r{i}", provider_request_id=f"chatcmpl-{i}") for i in range(12)]
    topic = topics_for(kafka_settings).usage
    async with running_ledger(kafka_settings, engine):
        # A redelivered event and an undecodable record are not discrepancies.
        await produce(kafka_settings, topic, *events, events[0], b"junk")
        await eventually(lambda: _equals(usage_count(engine), 12))

    report = await reconcile(kafka_settings, engine)
    assert (report.records, report.events, report.redelivered, report.poison) == (14, 12, 1, 1)
    assert report.ok and report.missing == [] and report.duplicates == []

    async with engine.begin() as connection:
        await connection.execute(delete(usage_events).where(usage_events.c.event_id == "use_r3"))
        # The same provider call billed a second time under another event id.
        original = (await connection.execute(
            select(usage_events).where(usage_events.c.event_id == "use_r5")
        )).one()._asdict()
        await connection.execute(insert(usage_events), [original | {"event_id": "use_again"}])
    report = await reconcile(kafka_settings, engine)
    assert report.missing == ["use_r3"] and not report.ok
    assert report.duplicates == [(events[5].request_id, "chatcmpl-5", ["use_again", "use_r5"])]

    # From a time after every event: nothing to compare.
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert (await reconcile(kafka_settings, engine, since=later)).events == 0


def test_reconcile_cli_exit_code(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import asyncio

    topic = topics_for(kafka_settings).usage
    asyncio.run(produce(kafka_settings, topic, usage("use_only")))
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    for name, value in kafka_settings.as_env().items():
        monkeypatch.setenv(name, value)
    assert main(["ledger", "reconcile", "--since", "1h"]) == 1  # never recorded
    out = capsys.readouterr().out
    assert "missing: 1" in out and "use_only" in out and "duplicate: 0" in out
