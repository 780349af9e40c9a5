"""PostgreSQL plumbing against a real server: migrations, URLs, API keys, requests of record."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, bindparam, insert, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from broker.batches import tables as _batch_tables  # noqa: F401  (registers its tables)
from broker.budgets import tables as _budget_tables  # noqa: F401  (registers its table)
from broker.clock import FakeClock
from broker.embedded import EmbeddedPostgres, free_port
from broker.errors import ConfigError, DatabaseUnavailable
from broker.settings import DatabaseSettings
from broker.stores.database import (
    create_engine,
    json_text,
    normalize_url,
    upgrade_database,
    wait_for_database,
)
from broker.stores.keys import (
    ApiKeyCache,
    ApiKeyRecord,
    create_api_key,
    find_api_key,
    generate_api_key,
    hash_secret,
    revoke_api_key,
)
from broker.stores.requests import get_request
from broker.stores.tables import api_keys, metadata
from broker.webhooks import tables as _webhook_tables  # noqa: F401  (registers its tables)

pytestmark = pytest.mark.integration

# The newest revision file, whichever it is: adding a migration needs no edit here.
HEAD = max(p.name[:4] for p in (Path(__file__).parents[2] / "migrations/versions").glob("0*.py"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db:5433/x", "postgresql+asyncpg://u:p@db:5433/x"),
        ("postgresql://u@db/x", "postgresql+asyncpg://u@db/x"),
        ("postgresql+asyncpg://u@db/x", "postgresql+asyncpg://u@db/x"),
        ("postgresql://u@db/x?sslmode=require", "postgresql+asyncpg://u@db/x?ssl=require"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize("url", ["mysql://u@db/x", "not a url"])
def test_normalize_url_refuses_other_databases(url: str) -> None:
    with pytest.raises(ConfigError):
        normalize_url(url)


async def test_upgrade_is_idempotent(database_url: str, engine: AsyncEngine) -> None:
    await upgrade_database(database_url)
    await asyncio.gather(upgrade_database(database_url), upgrade_database(database_url))
    async with engine.connect() as connection:
        version = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert version == [(HEAD,)]


async def test_migrations_match_tables(engine: AsyncEngine) -> None:
    def compare(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(compare) == []


async def test_upgrade_creates_a_missing_database(postgres_admin_url: str) -> None:
    name = f"created_{uuid.uuid4().hex[:10]}"
    url = make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    admin = create_async_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        await upgrade_database(url)
        async with admin.connect() as connection:
            found = await connection.scalar(
                text("SELECT count(*) FROM pg_database WHERE datname = :name"), {"name": name}
            )
        assert found == 1
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def test_wait_for_database(database_url: str) -> None:
    await wait_for_database(database_url, timeout_s=5)
    port = free_port()
    with pytest.raises(DatabaseUnavailable, match=f"127.0.0.1:{port}"):
        await wait_for_database(f"postgresql://postgres@127.0.0.1:{port}/x", timeout_s=0.3)


async def test_unreachable_database_is_database_unavailable() -> None:
    settings = DatabaseSettings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    engine = create_engine(settings)
    try:
        with pytest.raises(DatabaseUnavailable):
            await find_api_key(engine, generate_api_key().secret)
    finally:
        await engine.dispose()


def test_json_parameters_are_compact_json_text() -> None:
    assert json_text({"a": [1, None, "é"], 2: {"b": True}}) == '{"a":[1,null,"é"],"2":{"b":true}}'


async def test_jsonb_columns_round_trip_through_the_engine(engine: AsyncEngine) -> None:
    value = {"text": 'naïve ☃ "quoted"', "nested": {"n": [1, 2.5, None]}, "empty": {}}
    async with engine.connect() as connection:
        back = await connection.scalar(select(bindparam("value", value, type_=JSONB)))
    assert back == value


def test_generated_keys() -> None:
    key = generate_api_key()
    assert key.secret.startswith("sk-sluice-") and len(key.secret) == len("sk-sluice-") + 32
    assert key.prefix == key.secret[:14]
    assert key.id.startswith("key_") and len(key.id) == 16
    assert key.key_hash == hash_secret(key.secret) and len(key.key_hash) == 64
    assert generate_api_key().secret != key.secret


async def test_create_find_and_revoke_keys(engine: AsyncEngine) -> None:
    secret, record = await create_api_key(engine, "acme", "ci")
    assert (record.tenant, record.name, record.revoked_at) == ("acme", "ci", None)
    assert secret.startswith(record.prefix)
    assert await find_api_key(engine, secret) == record
    async with engine.connect() as connection:
        stored = (await connection.execute(select(api_keys))).one()
    assert stored.key_hash == hash_secret(secret) and secret not in stored
    assert stored.last_used_at is not None

    assert await find_api_key(engine, secret + "x") is None
    assert await find_api_key(engine, "Bearer nonsense") is None
    assert await revoke_api_key(engine, record.id)
    assert not await revoke_api_key(engine, record.id)
    assert await find_api_key(engine, secret) is None


async def test_cache_keeps_answers_for_their_ttl(engine: AsyncEngine) -> None:
    clock = FakeClock()
    cache = ApiKeyCache(engine, ttl_s=30, negative_ttl_s=5, clock=clock)
    secret, record = await create_api_key(engine, "acme")

    found = await asyncio.gather(*(cache.get(secret) for _ in range(20)))
    assert found == [record] * 20
    await revoke_api_key(engine, record.id)
    clock.now += 29
    assert await cache.get(secret) == record  # cached: revocation not seen yet
    clock.now += 2
    assert await cache.get(secret) is None

    # A negative answer is cached for a shorter time.
    new = generate_api_key()
    assert await cache.get(new.secret) is None
    async with engine.begin() as connection:
        await connection.execute(
            insert(api_keys).values(
                id=new.id, tenant="acme", prefix=new.prefix, key_hash=new.key_hash
            )
        )
    assert await cache.get(new.secret) is None
    clock.now += 6
    late = await cache.get(new.secret)
    assert late is not None and late.id == new.id
    cache.invalidate()


async def test_cache_keeps_known_keys_through_a_flood_of_unknown_ones(
    engine: AsyncEngine,
) -> None:
    asked: list[str] = []

    async def counting(engine: AsyncEngine, secret: str) -> ApiKeyRecord | None:
        asked.append(secret)
        return await find_api_key(engine, secret)

    secret, _ = await create_api_key(engine, "flooded")
    cache = ApiKeyCache(engine, max_entries=3, max_negative_entries=3, lookup=counting)
    assert await cache.get(secret) is not None
    for _ in range(10):
        assert await cache.get(generate_api_key().secret) is None
    before = len(asked)
    assert await cache.get(secret) is not None
    assert len(asked) == before


async def test_unknown_request_is_none(engine: AsyncEngine) -> None:
    assert await get_request(engine, "req_nope") is None


def test_embedded_postgres_in_a_private_directory(tmp_path: Path) -> None:
    """pytest's tmp_path is 0700 and root's: the server's user must still reach its data."""
    tmp_path.chmod(0o700)
    server = EmbeddedPostgres(data_dir=tmp_path / "pg")
    (tmp_path / "pg").mkdir()
    server.start()
    try:
        assert server.port > 0 and (tmp_path / "pg" / "data" / "PG_VERSION").exists()
    finally:
        server.stop()
