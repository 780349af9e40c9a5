"""PostgreSQL access: URLs, engines, migrations and error translation (asyncpg only).

Every process reaches PostgreSQL through an SQLAlchemy `AsyncEngine` on asyncpg. Migrations
run through the same driver (Alembic's `run_sync` on an async connection), configured in
code so no `alembic.ini` has to sit in the working directory of a service.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from broker.errors import ConfigError, DatabaseUnavailable, SluiceError
from broker.settings import DatabaseSettings

# Failures of database work that may heal by themselves (PostgreSQL restarting, a network
# blip): a loop logs them and tries again later. Anything else is a bug and surfaces.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    SluiceError, SQLAlchemyError, OSError, TimeoutError)

DRIVER = "postgresql+asyncpg"
_SCHEMES = {"postgres", "postgresql", DRIVER}
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 0x51_1CE_6A7E
# SQLSTATE classes that mean "the server is not reachable or not accepting work now".
_UNAVAILABLE_STATES = ("08", "53", "57P", "3D000")


def normalize_url(url: str) -> str:
    """The SQLAlchemy asyncpg form of a PostgreSQL URL.

    Accepts `postgres://` (Heroku and friends), `postgresql://` (libpq) and
    `postgresql+asyncpg://`. libpq's `sslmode` becomes asyncpg's `ssl`.

    Raises:
        ConfigError: the URL is not a PostgreSQL URL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r}") from exc
    if parsed.drivername not in _SCHEMES:
        raise ConfigError(f"unsupported database URL scheme {parsed.drivername!r}; use postgresql")
    parsed = parsed.set(drivername=DRIVER)
    if "sslmode" in parsed.query:
        # asyncpg's connect() takes `ssl`, and SQLAlchemy passes query options through.
        query = dict(parsed.query)
        query["ssl"] = query.pop("sslmode")
        parsed = parsed.set(query=query)
    return parsed.render_as_string(hide_password=False)


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """A pooled engine; pre-ping drops connections a database restart has killed."""
    return create_async_engine(
        normalize_url(settings.database_url),
        pool_size=settings.database_pool_size,
        pool_pre_ping=True,
        json_serializer=json_text,
    )


def json_text(value: object) -> str:
    """JSONB parameters as text, by orjson: the standard library's encoder was 6 % of the
    ledger's CPU, serializing every final result into `requests.result`."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE code behind a database error, if there is one."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means PostgreSQL cannot be reached now (as opposed to a bad statement)."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    state = sqlstate(exc)
    if state is None:
        return isinstance(exc, OperationalError | InterfaceError)
    return state.startswith(_UNAVAILABLE_STATES)


def is_data_error(exc: BaseException) -> bool:
    """Whether the rows themselves were refused (SQLSTATE class 22 data, 23 integrity)."""
    state = sqlstate(exc)
    return state is not None and state[:2] in {"22", "23"}


def _where(url: URL) -> str:
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


@contextmanager
def database_errors(engine: AsyncEngine) -> Iterator[None]:
    """Re-raise failures to reach PostgreSQL as `DatabaseUnavailable` (others unchanged)."""
    try:
        yield
    except PoolTimeout as exc:  # every pooled connection busy: overloaded, not broken
        raise DatabaseUnavailable(
            f"PostgreSQL at {_where(engine.url)}: no free connection in the pool ({exc})"
        ) from exc
    except (OSError, TimeoutError, DBAPIError) as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable(
                f"PostgreSQL at {_where(engine.url)} is unavailable: {exc}"
            ) from exc
        raise


def _migrations_dir() -> Path:
    spec = importlib.util.find_spec("migrations")
    if spec is None or spec.origin is None:
        raise ConfigError("the 'migrations' package is not installed")
    return Path(spec.origin).parent


def _upgrade_head(connection: Connection) -> None:
    # Serialise processes that start together: DDL is transactional in PostgreSQL, so the
    # second one waits here and then finds every revision applied.
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    config = Config()
    config.set_main_option("script_location", str(_migrations_dir()).replace("%", "%%"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def _ensure_database(engine: AsyncEngine) -> None:
    try:
        async with engine.connect():
            return
    except DBAPIError as exc:
        if sqlstate(exc) != "3D000":  # invalid_catalog_name: the database does not exist
            raise
    url = engine.url
    admin = create_async_engine(
        url.set(database="postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    name = (url.database or "").replace('"', '""')
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    except DBAPIError as exc:
        if sqlstate(exc) != "42P04":  # duplicate_database: a concurrent migrator won
            raise
    finally:
        await admin.dispose()


async def upgrade_database(url: str) -> None:
    """Create the database if it does not exist, then apply every migration (idempotent).

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    engine = create_async_engine(normalize_url(url), poolclass=NullPool)
    try:
        with database_errors(engine):
            await _ensure_database(engine)
            async with engine.begin() as connection:
                await connection.run_sync(_upgrade_head)
    finally:
        await engine.dispose()


async def wait_for_database(url: str, timeout_s: float) -> None:
    """Wait until PostgreSQL answers a query (it may still be starting up).

    Raises:
        DatabaseUnavailable: no answer within `timeout_s`; the message names the host.
        ConfigError: the server refused our credentials (waiting would not help).
    """
    engine = create_async_engine(normalize_url(url), poolclass=NullPool)
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    try:
        while True:
            try:
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
                return
            except (OSError, TimeoutError, DBAPIError) as exc:
                if (sqlstate(exc) or "").startswith("28"):  # invalid authorization
                    raise ConfigError(f"PostgreSQL at {_where(engine.url)}: {exc}") from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DatabaseUnavailable(
                        f"PostgreSQL at {_where(engine.url)} did not answer within "
                        f"{timeout_s:g}s: {exc}"
                    ) from exc
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)
    finally:
        await engine.dispose()
