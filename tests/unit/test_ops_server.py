"""The operations port: /livez, /readyz (503 naming what is not ready), /status, /metrics;
probes cached so health checks never hammer the database."""

from __future__ import annotations

import argparse
import asyncio

import httpx
import pytest

from broker.errors import DatabaseUnavailable
from broker.kafka import new_consumer
from broker.kafka.groups import group_membership
from broker.ops import CachedProbe, OpsServer, Readiness, flag
from broker.settings import DatabaseSettings, KafkaSettings
from broker.stores.database import create_engine
from broker.stores.health import ping_database
from sluice.cli import build_parser
from sluice.processes import _ops_address


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _get(server: OpsServer, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{server.port}{path}")


async def test_readyz_is_503_naming_what_is_not_ready_and_200_once_it_is() -> None:
    joined = False

    async def database_down() -> str | None:
        raise DatabaseUnavailable("PostgreSQL at db:5432/sluice is unavailable")

    postgres_up = False

    async def postgres() -> str | None:
        return None if postgres_up else await database_down()

    readiness = Readiness({"kafka_consumers": flag(lambda: joined, "not joined yet"),
                           "postgres": postgres})
    async with OpsServer("127.0.0.1", 0, readiness=readiness) as server:
        response = await _get(server, "/readyz")
        assert response.status_code == 503
        assert response.json() == {"ready": False, "checks": {
            "kafka_consumers": "not joined yet",
            "postgres": "PostgreSQL at db:5432/sluice is unavailable"}}
        joined = True
        response = await _get(server, "/readyz")
        assert response.status_code == 503
        assert response.json()["checks"] == {
            "kafka_consumers": "ok", "postgres": "PostgreSQL at db:5432/sluice is unavailable"}
        postgres_up = True
        response = await _get(server, "/readyz")
        assert response.status_code == 200
        assert response.json() == {"ready": True,
                                   "checks": {"kafka_consumers": "ok", "postgres": "ok"}}
        # The older name answers the same (`sluice dev` waits on it).
        assert (await _get(server, "/ready")).status_code == 200


async def test_livez_answers_while_readiness_fails_and_old_paths_still_work() -> None:
    readiness = Readiness({"kafka": flag(lambda: False, "Kafka away")})
    async with OpsServer("127.0.0.1", 0, readiness=readiness,
                         snapshot=lambda: {"breakers": {"a": "open"}}) as server:
        assert (await _get(server, "/livez")).json() == {"status": "ok"}
        assert (await _get(server, "/health")).status_code == 200
        assert (await _get(server, "/ready")).status_code == 503
        assert (await _get(server, "/status")).json() == {"breakers": {"a": "open"}}
        assert (await _get(server, "/nowhere")).status_code == 404
        async with httpx.AsyncClient() as client:
            posted = await client.post(f"http://127.0.0.1:{server.port}/readyz")
        assert posted.status_code == 405


async def test_status_without_a_snapshot_shows_the_checks() -> None:
    readiness = Readiness({"postgres": flag(lambda: False, "no database")})
    async with OpsServer("127.0.0.1", 0, readiness=readiness) as server:
        assert (await _get(server, "/status")).json() == {
            "ready": False, "checks": {"postgres": "no database"}}


async def test_metrics_is_404_until_a_source_is_plugged_in() -> None:
    async with OpsServer("127.0.0.1", 0) as server:
        assert (await _get(server, "/metrics")).status_code == 404
    exposition = b"# TYPE sluice_up gauge\nsluice_up 1\n"
    content_type = "text/plain; version=0.0.4; charset=utf-8"
    async with OpsServer("127.0.0.1", 0,
                         metrics=lambda: (exposition, content_type)) as server:
        response = await _get(server, "/metrics")
    assert response.status_code == 200
    assert response.content == exposition
    assert response.headers["content-type"] == content_type


async def test_a_probe_is_cached_for_its_ttl_failures_included() -> None:
    clock = FakeClock()
    outcomes: list[BaseException | None] = [DatabaseUnavailable("db away"), None]
    calls = 0

    async def probe() -> str | None:
        nonlocal calls
        calls += 1
        outcome = outcomes[min(calls - 1, len(outcomes) - 1)]
        if outcome is not None:
            raise outcome
        return None

    cached = CachedProbe(probe, ttl_s=2.0, clock=clock)
    assert await cached() == "db away"
    clock.now += 1.9
    assert await cached() == "db away"  # still the cached verdict: no second query
    assert calls == 1
    clock.now += 0.2
    assert await cached() is None
    assert calls == 2
    # Many probes at once (several load balancers) share one round trip.
    clock.now += 5
    assert await asyncio.gather(*(cached() for _ in range(20))) == [None] * 20
    assert calls == 3 and cached.probes == 3


async def test_a_hung_probe_counts_as_not_ready() -> None:
    never = asyncio.Event()

    async def hung() -> str | None:
        await never.wait()
        return None

    cached = CachedProbe(hung, timeout_s=0.01)
    assert await cached() == "no answer within 0.01s"
    verdict = await Readiness({"slow": hung}, timeout_s=0.01).evaluate()
    assert verdict.not_ready == {"slow": "no answer within 0.01s"}


async def test_ping_database_names_an_unreachable_server() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    engine = create_engine(DatabaseSettings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/sluice"))
    try:
        with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1:1/sluice"):
            await ping_database(engine)
    finally:
        await engine.dispose()


async def test_group_membership_waits_for_the_consumer_to_join() -> None:
    kafka = KafkaSettings(kafka_bootstrap="memory://ops-membership")
    assert await group_membership(kafka, "sluice.ledger", "sluice-ledger-x") == (
        "consumer group sluice.ledger has no member yet")
    consumer = new_consumer(kafka, client_id="sluice-ledger-x", group_id="sluice.ledger")
    consumer.subscribe(["sluice.results"])
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=1)  # takes the assignment
        assert await group_membership(kafka, "sluice.ledger", "sluice-ledger-x") is None
    finally:
        await consumer.stop()


@pytest.mark.parametrize("command", ["worker", "ledger", "deliver"])
@pytest.mark.parametrize("flag_name", ["--ops-port", "--status-port", "--metrics-port"])
def test_every_process_takes_one_ops_port_under_each_name(command: str,
                                                          flag_name: str) -> None:
    args = build_parser().parse_args([command, flag_name, "9464"])
    assert args.ops_port == 9464


def test_the_ops_port_comes_from_the_flag_or_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_OPS_PORT", raising=False)
    assert _ops_address(argparse.Namespace(ops_port=None)) is None
    assert _ops_address(argparse.Namespace(ops_port=9000)) == ("127.0.0.1", 9000)
    monkeypatch.setenv("SLUICE_OPS_PORT", "9100")
    monkeypatch.setenv("SLUICE_OPS_HOST", "0.0.0.0")
    assert _ops_address(argparse.Namespace(ops_port=None)) == ("0.0.0.0", 9100)


class _Described:
    """A DescribeGroups answer as aiokafka hands it over (`to_object()`)."""

    def __init__(self, state: str, *members: tuple[str, str]) -> None:
        self._group = {"error_code": 0, "group": "sluice.deliver", "state": state,
                       "members": [{"member_id": m, "client_id": c} for m, c in members]}

    def to_object(self) -> dict[str, object]:
        return {"groups": [self._group]}


@pytest.mark.parametrize(("answer", "verdict"), [
    # Apache Kafka names the client; Tansu leaves client_id empty, the member id tells.
    (_Described("Stable", ("sluice-deliver-a-1-5e59", "sluice-deliver-a-1")), None),
    (_Described("Stable", ("sluice-deliver-a-1-5e59", "")), None),
    (_Described("Stable", ("sluice-deliver-b-2-77aa", "sluice-deliver-b-2")),
     "this process (sluice-deliver-a-1) is not a member of sluice.deliver yet"),
    (_Described("PreparingRebalance", ("sluice-deliver-a-1-5e59", "sluice-deliver-a-1")),
     "consumer group sluice.deliver is PreparingRebalance, not Stable"),
])
def test_group_membership_reads_the_coordinators_answer(answer: _Described,
                                                        verdict: str | None) -> None:
    from broker.kafka.groups import _verdict

    assert _verdict("sluice.deliver", "sluice-deliver-a-1", [answer]) == verdict
