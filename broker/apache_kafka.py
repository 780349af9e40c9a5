"""Apache Kafka brokers for tests, benchmarks and `sluice dev --kafka apache`, from Maven jars.

Apache Kafka is the engine sluicegate runs on in production; this starts the real thing on
this machine without a tarball or Docker: the broker's jars (`org.apache.kafka:kafka_2.13`
plus a log4j2 backend, which Kafka does not declare as a runtime dependency) are fetched
once with Maven into a cache folder outside the repository, every node's KRaft storage is
formatted with `kafka.tools.StorageTool`, and each node runs `kafka.Kafka` on Java 17+ as a
combined broker and controller on free loopback ports. A node is ready when it logs
"Kafka Server started".

One node serves the test suite; three make a cluster for fault tests, with the durable
defaults production wants (replication factor 3, `min.insync.replicas` 2). With `sasl_users`
clients must log in: the client listener speaks SASL_PLAINTEXT with SCRAM-SHA-256, whose
credentials KRaft takes at format time (`StorageTool format --add-scram`).
"""

from __future__ import annotations

import contextlib
import fcntl
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from broker.embedded import free_port
from broker.errors import ConfigError

# aiokafka 0.14 was verified against this broker (the whole integration suite runs on it).
KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.3"
READY_LINE = b"Kafka Server started"
SCRAM = "SCRAM-SHA-256"
_SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.sluicegate</groupId><artifactId>apache-kafka-runtime</artifactId>
  <version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

# WARN everywhere, but the one INFO line that says the node is ready.
_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.ready.name = kafka.server.KafkaRaftServer
logger.ready.level = INFO
"""


def default_cache_dir() -> Path:
    """Where the broker's jars are kept between runs: `~/.cache/sluicegate/…`."""
    return Path.home() / ".cache" / "sluicegate" / f"apache-kafka-{KAFKA_VERSION}"


def missing_tools() -> list[str]:
    """The programs an Apache Kafka start needs that this machine lacks."""
    missing = [] if (java_major_version() or 0) >= 17 else ["Java 17+"]
    return [*missing, *(["Maven"] if shutil.which("mvn") is None else [])]


def fetch_jars(
    cache_dir: Path | None = None, *, progress: Callable[[str], None] | None = None
) -> Path:
    """The folder holding the broker's classpath, fetched with Maven on first use.

    Safe to call from several processes at once: one fetches, the others wait for it.
    """
    cache_dir = cache_dir or default_cache_dir()
    libs = cache_dir / "libs"
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return libs
    missing = missing_tools()
    if missing:
        raise ConfigError(
            f"Apache Kafka needs {' and '.join(missing)}: apt-get install "
            "openjdk-17-jre-headless maven, or use the embedded broker (Tansu)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():  # another process did it
            return libs
        if progress is not None:
            progress(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven into {libs} "
                     "(once; about 45 MB)")
        (cache_dir / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
        staging = cache_dir / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(cache_dir / "pom.xml"),
             "dependency:copy-dependencies", "-DincludeScope=runtime",
             f"-DoutputDirectory={staging}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
        )
        if result.returncode != 0:
            tail = result.stdout.decode(errors="replace")[-2000:]
            raise ConfigError(f"Maven could not fetch Apache Kafka {KAFKA_VERSION}:\n{tail}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
    return libs


@dataclass
class _Node:
    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"


class ApacheKafka:
    """Apache Kafka (KRaft) nodes, each a broker and a controller, on free loopback ports.

    Args:
        nodes: 1 for a single broker, 3 (or more) for a cluster that survives losing one.
        base_dir: where storage and logs go; a temporary folder (removed on stop) if None.
        jars: the classpath folder; fetched with Maven into the cache if None.
        heap_mb: each node's maximum heap.
        fast_start: compile with C1 only (starts faster; slower under long load).
        overrides: extra `server.properties` entries for every node.
        progress: told what is happening during a slow first start.
        sasl_users: user name -> password; if given, clients must log in with SCRAM-SHA-256
            over SASL_PLAINTEXT (the brokers log in to each other as a user of their own).
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        base_dir: Path | None = None,
        jars: Path | None = None,
        heap_mb: int = 512,
        fast_start: bool = True,
        overrides: Mapping[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
        sasl_users: Mapping[str, str] | None = None,
    ):
        if nodes < 1:
            raise ConfigError("an Apache Kafka cluster needs at least one node")
        self._own_dir = base_dir is None
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="sluice-kafka-"))
        self._jars = jars
        self._heap_mb = heap_mb
        self._fast_start = fast_start
        self._overrides = dict(overrides or {})
        self._progress = progress
        self._sasl_users = dict(sasl_users or {})
        if self._sasl_users:
            self._sasl_users.setdefault("sluice-broker", secrets.token_hex(16))
        self.nodes = [
            _Node(node_id, free_port(), free_port(), self.base_dir / f"node-{node_id}")
            for node_id in range(1, nodes + 1)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def node(self, node_id: int) -> _Node:
        """The node with this `node.id` (they count from 1)."""
        return self.nodes[node_id - 1]

    def pid(self, node_id: int) -> int | None:
        """The process id of a running node."""
        process = self.node(node_id).process
        return process.pid if process is not None and process.poll() is None else None

    def start(self, timeout_s: float = 90.0) -> ApacheKafka:
        """Fetch jars if needed, format every node's storage, start them, wait until ready."""
        self._jars = self._jars or fetch_jars(progress=self._progress)
        cluster_id = self._java("kafka.tools.StorageTool", "random-uuid").strip()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "log4j2.properties").write_text(_LOG4J2)
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            properties = node.directory / "server.properties"
            properties.write_text(self._server_properties(node))
            scram = [argument for name, password in self._sasl_users.items()
                     for argument in ("--add-scram", f"{SCRAM}=[name={name},password={password}]")]
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                       "-c", str(properties), *scram)
        for node in self.nodes:
            self._launch(node)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            self._wait_ready(node, 0, deadline)
        return self

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: no clean shutdown, no leadership handed over."""
        node = self.node(node_id)
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait(10)

    def restart(self, node_id: int, timeout_s: float = 90.0) -> None:
        """Start a stopped or killed node again on its old ports and storage."""
        node = self.node(node_id)
        seen = node.log_path.stat().st_size if node.log_path.exists() else 0
        self._launch(node)
        self._wait_ready(node, seen, time.monotonic() + timeout_s)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 20 s); remove a temporary folder."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(20)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(10)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _server_properties(self, node: _Node) -> str:
        count = len(self.nodes)
        replicas = min(3, count)
        # A cluster of three keeps writing with one node down: acks=all needs two copies.
        min_isr = 2 if count >= 3 else 1
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},"
                         f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.directory / "data"),
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(replicas),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            # Tests and `sluice dev` use short sessions for a fast takeover after a crash.
            "group.min.session.timeout.ms": "1000",
            # Sized for two cores, as Kafka's own test utilities do.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "log.cleaner.dedupe.buffer.size": "2097152",
            **self._sasl_properties(node),
            **self._overrides,
        }
        return "".join(f"{key}={value}\n" for key, value in properties.items())

    def _sasl_properties(self, node: _Node) -> dict[str, str]:
        if not self._sasl_users:
            return {}
        password = self._sasl_users["sluice-broker"]
        return {
            "listeners": f"SASL_PLAINTEXT://127.0.0.1:{node.port},"
                         f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{node.port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,"
                                              "CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            f"listener.name.sasl_plaintext.{SCRAM.lower()}.sasl.jaas.config":
                f'{_SCRAM_LOGIN} required username="sluice-broker" password="{password}";',
        }

    def _jvm(self) -> list[str]:
        options = [f"-Xmx{self._heap_mb}m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
                   f"-Dlog4j2.configurationFile={self.base_dir / 'log4j2.properties'}",
                   f"-Dkafka.logs.dir={self.base_dir}"]
        if self._fast_start:
            options.append("-XX:TieredStopAtLevel=1")
        return ["java", *options, "-cp", f"{self._jars}/*"]

    def _java(self, main_class: str, *args: str) -> str:
        result = subprocess.run([*self._jvm(), main_class, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, check=False)
        output = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            raise ConfigError(f"{main_class} {' '.join(args[:1])} failed: {output[-2000:]}")
        return output

    def _launch(self, node: _Node) -> None:
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(
                [*self._jvm(), "kafka.Kafka", str(node.directory / "server.properties")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _wait_ready(self, node: _Node, seen: int, deadline: float) -> None:
        assert node.process is not None
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError), open(node.log_path, "rb") as log:
                log.seek(seen)
                if READY_LINE in log.read():
                    return
            if node.process.poll() is not None:
                raise ConfigError(f"Apache Kafka node {node.node_id} exited with code "
                                  f"{node.process.returncode}; see {node.log_path}")
            time.sleep(0.1)
        raise ConfigError(f"Apache Kafka node {node.node_id} was not ready in time; "
                          f"see {node.log_path}")


def java_major_version() -> int | None:
    """The major version of `java` on PATH, or None without one."""
    if shutil.which("java") is None:
        return None
    result = subprocess.run(["java", "-XshowSettings:properties", "-version"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    for line in result.stdout.decode(errors="replace").splitlines():
        key, _, value = line.strip().partition(" = ")
        if key == "java.specification.version":
            with contextlib.suppress(ValueError):
                return int(value.split(".")[0] if not value.startswith("1.") else value[2:])
    return None


