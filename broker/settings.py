"""Connection and tuning settings, read from the environment once, at the edge.

Components take these objects as arguments; tests build them directly. Every field maps
to an environment variable `SLUICE_<FIELD>` (for example `SLUICE_KAFKA_BOOTSTRAP`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", frozen=True, extra="ignore")

    def as_env(self) -> dict[str, str]:
        """These settings as `SLUICE_<FIELD>` variables, for a child `sluice` process."""
        env = {}
        for name, value in self:
            if value is not None:
                secret = value.get_secret_value() if isinstance(value, SecretStr) else value
                env[f"SLUICE_{name.upper()}"] = str(secret)
        return env


KafkaEngine = Literal["apache", "tansu"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
MIN_ADMIN_KEY_CHARS = 32


class KafkaSettings(_Settings):
    """How to reach Kafka and name topics."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    # "apache": Apache Kafka, or any broker speaking its whole protocol (production).
    # "tansu": the embedded broker of `sluice dev` and the tests. It has no idempotent
    # producer, and its memory engine lists a partition's whole history on every fetch
    # that finds records; the workarounds for that (fetch pacing, sticky reply
    # partitions) apply on this engine only. Chosen at the composition root.
    kafka_engine: KafkaEngine = "apache"
    topic_prefix: str = "sluice."
    topic_partitions: int = Field(default=8, ge=1)
    # Replicas of every topic sluicegate creates; None takes the brokers' own
    # `default.replication.factor`. Never 1 on a cluster that must survive a broker.
    topic_replication_factor: int | None = Field(default=None, ge=1)
    # `min.insync.replicas` of created topics; None takes the brokers' default. With
    # acks=all a write then needs this many copies before anyone is told "accepted".
    topic_min_insync_replicas: int | None = Field(default=None, ge=1)
    # How far back a cancel still matters: at least the longest lane deadline (batch, 24 h)
    # plus retries. The cancels topic keeps markers this long (`retention.ms`), and a
    # starting worker reads only this far back instead of the topic's whole history.
    cancel_lookback_s: float = Field(default=25 * 3600.0, gt=0)
    # The largest record the brokers accept; None asks them (`message.max.bytes`) at start.
    max_message_bytes: int | None = Field(default=None, ge=1024)
    # An ingress instance's reply topic has one reader, but on the embedded broker each
    # fetch that finds a reply lists that partition's whole history: with one partition,
    # p50 at one caller grew 11 -> 15 ms over 2,000 requests. Kafka does not mind either.
    reply_topic_partitions: int = Field(default=8, ge=1)
    # Latency-sensitive consumers use a short fetch wait (see DESIGN.md: 500 ms default
    # makes ~1% of round trips wait ~250 ms).
    fetch_max_wait_ms: int = Field(default=20, ge=1)
    # Under load those consumers lengthen their wait up to this (see broker/kafka/fetch_pacing.py).
    busy_fetch_max_wait_ms: int = Field(default=20, ge=1)
    # ...and, after 2 s with nothing to read, wait this long (see broker/kafka/fetch_pacing.py).
    idle_fetch_max_wait_ms: int = Field(default=50, ge=1)
    # Consumers nobody waits on (ledger, retries, cancels) poll at this pace instead: on an
    # idle stack, short waits everywhere kept the embedded broker 86% busy doing nothing.
    background_fetch_max_wait_ms: int = Field(default=250, ge=1)
    # ...and ask the broker to hold each of their fetches until this many bytes wait (or
    # the wait above ends): under load, fewer and fuller fetches cost Kafka and the
    # readers less per record (see docs/BENCHMARKS.md).
    background_fetch_min_bytes: int = Field(default=1, ge=1)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    # How long a silent consumer keeps its partitions. Shorter means faster takeover after a
    # crash (and, on Tansu, a faster first join: it holds JoinGroup for half of this).
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    # How every Kafka client (producer, consumer, admin) of this process connects; see
    # broker/kafka/security.py. SASL needs a mechanism, a user and a password; SSL
    # verifies the brokers against the CA file (or the system's CAs without one).
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None  # a client certificate (mutual TLS)
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    # Shared by ingress, workers and the batch launcher: what they publish to request
    # topics is signed with it, and Kafka-native clients get per-key secrets derived from
    # it (workers/inference/provenance.py). Without it nothing can be verified.
    kafka_signing_key: SecretStr | None = None
    # A closed cluster whose every producer is trusted may let workers serve unsigned
    # requests as today (tenant and reply topic as the message says). Off: production
    # verifies; a bad signature is refused either way.
    kafka_trust_unsigned: bool = False

    @field_validator("kafka_signing_key")
    @classmethod
    def _signing_key_strong(cls, key: SecretStr | None) -> SecretStr | None:
        # Whoever guesses it can sign requests as any tenant.
        if key is not None and len(key.get_secret_value()) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(
                f"SLUICE_KAFKA_SIGNING_KEY must be at least {MIN_ADMIN_KEY_CHARS} characters; "
                "generate one with `openssl rand -hex 32`")
        return key

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        # A half-configured SASL client fails at connect with an opaque handshake error.
        if self.kafka_security_protocol.startswith("SASL_") and not (
                self.kafka_sasl_mechanism and self.kafka_sasl_username
                and self.kafka_sasl_password):
            raise ValueError(
                f"SLUICE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "SLUICE_KAFKA_SASL_MECHANISM, SLUICE_KAFKA_SASL_USERNAME and "
                "SLUICE_KAFKA_SASL_PASSWORD")
        return self


class DatabaseSettings(_Settings):
    """How to reach PostgreSQL."""

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/sluice"
    database_pool_size: int = Field(default=5, ge=1)


class IngressSettings(_Settings):
    """The HTTP edge."""

    host: str = "127.0.0.1"
    port: int = 8080
    ingress_id: str | None = None
    sync_timeout_s: float = Field(default=60.0, gt=0)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Long polls (`GET /v1/requests/{id}?wait=`) one tenant may hold open on an instance.
    max_long_polls_per_tenant: int = Field(default=100, ge=1)
    # uvicorn's limit_concurrency: connections and requests in flight before 503s.
    max_connections: int = Field(default=4096, ge=16)
    public_url: str | None = None
    # SLUICE_ADMIN_KEY: guards /v1/admin/* and tenant-wide usage; unset disables them.
    admin_key: SecretStr | None = None

    @field_validator("admin_key")
    @classmethod
    def _strong_enough(cls, key: SecretStr | None) -> SecretStr | None:
        # It can create keys for any tenant: guessable would mean the whole gateway.
        if key is not None and len(key.get_secret_value()) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(
                f"SLUICE_ADMIN_KEY must be at least {MIN_ADMIN_KEY_CHARS} characters (it "
                "guards every tenant); generate one with `openssl rand -hex 32`")
        return key


class WorkerSettings(_Settings):
    """The inference worker pool."""

    worker_concurrency: int = Field(default=128, ge=1, le=10_000)
    commit_interval_s: float = Field(default=0.2, gt=0)
    # `GET /status` (breakers, held retries) of this worker; off unless a port is given.
    status_port: int | None = Field(default=None, ge=0, le=65535)
    status_host: str = "127.0.0.1"
    # Priority lanes: batch requests may hold at most this share of the slots (the rest
    # is kept for interactive ones), and reserve budget only while this share of a
    # bucket's burst stays left over for interactive calls of other workers.
    batch_slot_share: float = Field(default=0.5, gt=0, le=1)
    batch_budget_margin: float = Field(default=0.5, ge=0, le=1)
    # Fair share: one tenant may hold at most this share of a worker's slots with
    # interactive requests; beyond it they wait on the batch topic (workers/inference/pool.py).
    tenant_slot_share: float = Field(default=0.5, gt=0, le=1)
    budget_log_interval_s: float = Field(default=30.0, gt=0)
    # Replies to an ingress reply topic produced within one slot share a partition (see
    # workers/inference/reply_partitions.py).
    reply_partition_slot_s: float = Field(default=0.02, gt=0)


class LedgerSettings(_Settings):
    """The usage ledger writer."""

    ledger_batch_size: int = Field(default=2000, ge=1)
    ledger_flush_interval_s: float = Field(default=0.05, gt=0)
    # Privacy: how long completion text of tenants without `store_content` stays in
    # `requests.result` (long enough to poll for it), and how often the ledger sweeps it out.
    ledger_result_retention_s: float = Field(default=86_400.0, ge=0)
    ledger_purge_interval_s: float = Field(default=60.0, gt=0)
    # Admission holds of requests that can no longer finish are released by the same sweep:
    # older than this (keep it above the longest lane deadline: batch, 24 h), or with no
    # trace of their request this long after admission.
    ledger_hold_max_age_s: float = Field(default=25 * 3600.0, gt=0)
    ledger_hold_orphan_age_s: float = Field(default=3600.0, gt=0)


class AppSettings(_Settings):
    """Where the model/deployment configuration file lives; the operations port."""

    config: Path | None = None
    state_dir: Path = Path(".sluice")
    # The operations port of `sluice worker`, `ledger` and `deliver` (broker/ops):
    # /livez, /readyz, /status and /metrics. Off unless a port is given. Probes from
    # another host (Kubernetes' kubelet) need SLUICE_OPS_HOST=0.0.0.0.
    ops_port: int | None = Field(default=None, ge=0, le=65535)
    ops_host: str = "127.0.0.1"
