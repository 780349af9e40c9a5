"""Durability on a real Apache Kafka cluster: a broker killed with SIGKILL loses nothing.

Three KRaft nodes, topics with replication factor 3 and `min.insync.replicas` 2. While
5,000 requests arrive at concurrency 64, the broker leading most request partitions is
killed with SIGKILL and later restarted. Every request answered 200/202 (or 504, which
also hands out an id) reaches exactly one final answer in the ledger, no provider call is
billed twice, and the usage topic reconciles with the ledger. The test prints its figures.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from broker.apache_kafka import ApacheKafka, missing_tools
from broker.kafka import ensure_topics, topics_for
from broker.settings import IngressSettings, KafkaSettings
from simulator import SimulatorSettings
from tests.integration.stack import Stack, eventually, running_stack
from workers.ledger.reconcile import reconcile

pytestmark = pytest.mark.integration

REQUESTS = 5_000
CONCURRENCY = 64
KILL_AFTER = 1_000
RESTART_AFTER = 3_000
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ApacheKafka]:
    if missing_tools():
        message = f"a 3-node Apache Kafka cluster needs {' and '.join(missing_tools())}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # A dead broker is noticed after broker.session.timeout.ms; 9 s by default, 3 s here
    # so the test spends its time on traffic rather than waiting.
    with ApacheKafka(nodes=3, overrides={"broker.session.timeout.ms": "3000",
                                         "broker.heartbeat.interval.ms": "500"}) as kafka:
        yield kafka


async def _partitions(kafka: KafkaSettings, topic: str) -> list[dict[str, Any]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions: list[dict[str, Any]] = described[0]["partitions"]
    return partitions


async def _leader_counts(kafka: KafkaSettings, topic: str) -> Counter[int]:
    return Counter(p["leader"] for p in await _partitions(kafka, topic))


async def _has_partitions(kafka: KafkaSettings, topic: str) -> bool:
    return bool(await _partitions(kafka, topic))


async def _replicas(kafka: KafkaSettings, topic: str) -> set[int]:
    return {len(p["replicas"]) for p in await _partitions(kafka, topic)}


async def test_a_broker_killed_mid_run_loses_no_request_and_bills_none_twice(
    cluster: ApacheKafka, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kafka = KafkaSettings(
        kafka_bootstrap=cluster.bootstrap, kafka_engine="apache",
        topic_prefix=f"d{os.getpid()}.", topic_partitions=6,
        topic_replication_factor=3, topic_min_insync_replicas=2, max_message_bytes=1_048_588,
        session_timeout_ms=6000, heartbeat_interval_ms=500, publish_timeout_s=30,
        # Ingress signs, workers and the ledger verify: nothing unsigned is served.
        kafka_signing_key=SecretStr(f"durability-{uuid.uuid4().hex}"))
    simulator = SimulatorSettings(latency_ms=5)
    statuses: Counter[int] = Counter()
    accepted: set[str] = set()
    killed: dict[str, float] = {}
    async with running_stack(kafka, database_url, simulator=simulator,
                             ingress=IngressSettings(sync_timeout_s=60)) as stack:
        topic = topics_for(kafka).requests(MODEL)
        for name in (topic, topics_for(kafka).results, topics_for(kafka).usage):
            # The worker creates its topics as it starts, beside ingress: wait for them.
            await eventually(functools.partial(_has_partitions, kafka, name))
            assert await _replicas(kafka, name) == {3}, name
        started = time.monotonic()
        done = 0
        reached = {KILL_AFTER: asyncio.Event(), RESTART_AFTER: asyncio.Event()}
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(index: int) -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{index}"}]}
            async with gate:
                path = "/v1/requests" if index % 2 else "/v1/chat/completions"
                try:
                    response = await stack.client.post(path, json=body, headers=stack.auth,
                                                       timeout=90)
                except httpx.HTTPError:
                    statuses[0] += 1
                    response = None
            if response is None:
                return
            statuses[response.status_code] += 1
            if response.status_code in (200, 202, 504):
                accepted.add(response.json()["id"])
            nonlocal done
            done += 1
            if done in reached:
                reached[done].set()

        async def chaos() -> None:
            await reached[KILL_AFTER].wait()
            leaders = await _leader_counts(kafka, topic)
            victim = leaders.most_common(1)[0][0]
            cluster.kill(victim)
            killed["node"] = victim
            killed["at_s"] = time.monotonic() - started
            await reached[RESTART_AFTER].wait()
            await asyncio.to_thread(cluster.restart, victim)
            killed["restarted_at_s"] = time.monotonic() - started

        chaos_task = asyncio.create_task(chaos())
        await asyncio.gather(*(one(index) for index in range(REQUESTS)))
        await chaos_task
        sent_s = time.monotonic() - started

        async def all_final() -> bool:
            final = await stack.scalar(
                "select count(*) from requests where id = any(:ids) and status <> 'queued'",
                ids=list(accepted))
            return bool(final == len(accepted))

        await eventually(all_final, timeout_s=180)
        finished_s = time.monotonic() - started

        async def all_billed() -> bool:  # usage travels on its own topic, maybe a fetch later
            billed = await stack.scalar(
                "select count(distinct request_id) from usage_events "
                "where request_id = any(:ids)", ids=list(accepted))
            return bool(billed == len(accepted))

        await eventually(all_billed, timeout_s=60)
        succeeded = await stack.scalar(
            "select count(*) from requests where id = any(:ids) and status = 'succeeded'",
            ids=list(accepted))
        billed = await stack.scalar(
            "select count(*) from usage_events where request_id = any(:ids)", ids=list(accepted))
        twice = await stack.scalar(
            "select count(*) from (select provider_request_id from usage_events "
            "group by provider_request_id having count(*) > 1) d")
        unknown = await _not_accepted_but_billed(stack, accepted)
        report = await reconcile(kafka, stack.engine)

    with capsys.disabled():  # the figures belong in the CI log, pass or fail
        print(f"\n{REQUESTS} requests at concurrency {CONCURRENCY} on 3 brokers (RF 3, min ISR 2): "
              f"node {killed['node']} SIGKILLed at {killed['at_s']:.1f}s, restarted at "
              f"{killed['restarted_at_s']:.1f}s; answers {dict(sorted(statuses.items()))}; "
              f"{len(accepted)} accepted, all final after {finished_s:.1f}s (sent in "
              f"{sent_s:.1f}s), {succeeded} succeeded, {billed} usage rows, "
              f"{twice} provider calls billed twice, {unknown} billed but refused; "
              f"reconcile: {report.events} events, {len(report.missing)} missing, "
              f"{len(report.duplicates)} duplicated")
    assert killed.get("restarted_at_s") is not None
    assert len(accepted) >= REQUESTS * 0.9, statuses  # most calls got through the failover
    assert set(statuses) <= {0, 200, 202, 503, 504}, statuses
    assert succeeded == len(accepted)
    assert billed >= succeeded  # at least one billed call each, repeats have their own rows
    assert twice == 0
    assert unknown == 0
    assert report.ok, (report.missing[:5], report.duplicates[:5])


async def _not_accepted_but_billed(stack: Stack, accepted: set[str]) -> int:
    """Requests billed although their caller was told 503 (nothing accepted)."""
    count = await stack.scalar(
        "select count(distinct request_id) from usage_events where not request_id = any(:ids)",
        ids=list(accepted))
    return int(count)


async def test_topics_with_fewer_than_three_replicas_on_a_cluster_are_a_warning(
    cluster: ApacheKafka, caplog: pytest.LogCaptureFixture
) -> None:
    base = KafkaSettings(kafka_bootstrap=cluster.bootstrap, topic_prefix=f"w{os.getpid()}.")
    fragile = base.model_copy(update={"topic_replication_factor": 1})
    with caplog.at_level(logging.WARNING, logger="sluice.kafka"):
        await ensure_topics(fragile, [f"{base.topic_prefix}fragile"])
        await ensure_topics(base, [f"{base.topic_prefix}durable"])  # the brokers' default: 3
    warned = [r.getMessage() for r in caplog.records if "replica" in r.getMessage()]
    assert len(warned) == 1, warned
    assert f"{base.topic_prefix}fragile has 1 replica(s) on a cluster of 3 brokers" in warned[0]
    assert "SLUICE_TOPIC_REPLICATION_FACTOR" in warned[0]
    assert await _replicas(base, f"{base.topic_prefix}durable") == {3}
