"""`sluice dead-letters list|replay` against the real dead-letter topic."""

from __future__ import annotations

import asyncio
import json

import pytest

from broker.kafka import new_consumer, new_producer, send_to_dead_letter
from broker.settings import KafkaSettings
from schemas import Topics
from sluice.cli import main
from sluice.deadletters import read_dead_letters

pytestmark = pytest.mark.integration


async def _poison(kafka: KafkaSettings, topics: Topics) -> None:
    """Two messages on a request topic, both parked in the dead-letter topic."""
    source = topics.requests("m")
    producer = new_producer(kafka, client_id="test")
    await producer.start()
    consumer = new_consumer(kafka, client_id="test", group_id=None)
    await consumer.start()
    try:
        for value in (b"not json", b'{"also": "bad"}'):
            await producer.send_and_wait(source, value, key=value[:3],
                                         headers=[("traceparent", b"00-x")], partition=0)
        consumer.subscribe([source])
        records: list[object] = []
        while len(records) < 2:
            batch = await consumer.getmany(timeout_ms=500)
            records += [r for rs in batch.values() for r in rs]
        for record in records:
            await send_to_dead_letter(producer, topics, record, "poison for the test")
    finally:
        await consumer.stop()
        await producer.stop()


def test_list_and_replay(
    kafka_settings: KafkaSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics = Topics(kafka_settings.topic_prefix)
    asyncio.run(_poison(kafka_settings, topics))
    for name, value in kafka_settings.as_env().items():
        monkeypatch.setenv(name, value)

    assert main(["dead-letters", "list", "--limit", "1"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    newest = json.loads(line)
    assert newest["reason"] == "poison for the test"
    assert newest["topic"] == topics.requests("m") and newest["offset"] == 1
    assert newest["value"] == '{"also": "bad"}'

    assert main(["dead-letters", "replay", "--id", newest["id"]]) == 0
    assert "replayed 1" in capsys.readouterr().out

    async def source_records() -> list[tuple[bytes | None, dict[str, bytes]]]:
        consumer = new_consumer(kafka_settings, client_id="check", group_id=None)
        await consumer.start()
        consumer.subscribe([topics.requests("m")])
        found: list[tuple[bytes | None, dict[str, bytes]]] = []
        try:
            while len(found) < 3:
                batch = await consumer.getmany(timeout_ms=500)
                found += [(r.value, dict(r.headers)) for rs in batch.values() for r in rs]
        finally:
            await consumer.stop()
        return found

    found = asyncio.run(source_records())
    # The replayed copy goes to its key's partition: compare as a multiset.
    assert sorted(value or b"" for value, _ in found) == sorted(
        [b"not json", b'{"also": "bad"}', b'{"also": "bad"}'])
    # Original headers only, never the dead-letter ones.
    assert all(headers == {"traceparent": b"00-x"} for _, headers in found)
    assert len(asyncio.run(read_dead_letters(kafka_settings))) == 2

    assert main(["dead-letters", "replay", "--id", "9:999"]) == 2
    assert "no dead letter with id 9:999" in capsys.readouterr().err
