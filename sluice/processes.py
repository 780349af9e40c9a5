"""Entry points of the long-running processes and small commands (composition root).

Each reads settings from the environment once, builds the real components and runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from broker import metrics
from broker.config import SluiceConfig, load_config
from broker.errors import ConfigError
from broker.kafka import with_broker_limits
from broker.metrics import MetricsSettings
from broker.ops import CachedProbe, Check, OpsServer, Readiness, Snapshot, flag
from broker.settings import (
    AppSettings,
    DatabaseSettings,
    IngressSettings,
    KafkaSettings,
    LedgerSettings,
    WorkerSettings,
)
from sluice.runtime import configure_logging, run_until_signalled

if TYPE_CHECKING:  # a handle passed to the probes; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("sluice")


def _config(args: argparse.Namespace) -> SluiceConfig:
    path: Path | None = getattr(args, "config", None) or AppSettings().config
    if path is None:
        raise ConfigError("no config file: pass --config FILE or set SLUICE_CONFIG")
    return load_config(path)


def run_ingress(args: argparse.Namespace) -> int:
    """`sluice ingress`: serve the HTTP API with uvicorn."""
    import uvicorn

    from broker.admission import postgres_admission
    from broker.batches.settings import BatchSettings
    from broker.stores.database import create_engine
    from broker.stores.notifications import FinalResultListener
    from broker.webhooks.settings import WebhookSettings
    from ingress.app import create_app
    from ingress.hot_routes import serve
    from ingress.postgres import PostgresApiKeys, PostgresRequests
    from ingress.services import IngressServices, LedgerAccess

    configure_logging(service="sluice-ingress")
    metrics.configure(MetricsSettings())
    settings = IngressSettings()
    config = _config(args)
    asyncio.run(_import_config_prices(config))
    engine = create_engine(DatabaseSettings())
    services = IngressServices(
        settings=settings,
        kafka=asyncio.run(with_broker_limits(KafkaSettings())),
        config=config,
        api_keys=PostgresApiKeys(engine),
        requests=PostgresRequests(engine),
        webhooks=WebhookSettings(),
        batches=BatchSettings(),
        ledger=LedgerAccess(engine),
        admission=postgres_admission(engine, config),
        announcements=FinalResultListener(engine),
    )
    uvicorn.run(
        serve(create_app(services)),
        host=args.host or settings.host,
        port=args.port or settings.port,
        access_log=False,
        # Nothing in the ingress reads the caller's address (keys identify callers), so
        # uvicorn's X-Forwarded-For rewriting would cost every request for nothing.
        proxy_headers=False,
        # Past this many connections and requests in flight, new ones get 503 at once
        # instead of queueing memory (each sync request holds its connection up to
        # SLUICE_SYNC_TIMEOUT_S).
        limit_concurrency=settings.max_connections,
        backlog=min(settings.max_connections, 65535),
        log_level="warning",
        log_config=None,  # uvicorn's own lines go through our handlers (JSON in production)
        loop="uvloop",
        http="httptools",
        lifespan="on",
    )
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """`sluice worker`: consume request topics and call providers."""
    from broker.admission import postgres_admission
    from broker.budgets import PostgresBudgetStore
    from broker.stores.database import create_engine
    from broker.stores.tenants import tenant_weights
    from workers.inference import InferencePool
    from workers.inference.heartbeat import WorkerHeartbeat
    from workers.inference.native_admission import NativeAdmission
    from workers.inference.provenance import PostgresKeyLookup, RequestProvenance
    from workers.inference.results import PostgresFinalResults
    from workers.inference.tenant_weights import TenantWeights
    from workers.providers import ProviderTransports, ProxyEnvironment, build_provider

    configure_logging(service="sluice-worker")
    metrics.configure(MetricsSettings())
    config = _config(args)
    models = args.models.split(",") if args.models else list(config.models)
    unknown = [m for m in models if m not in config.models]
    if unknown:
        raise ConfigError(f"--models names unknown models: {', '.join(unknown)}")
    worker_settings = WorkerSettings()
    if args.concurrency:
        worker_settings = WorkerSettings(worker_concurrency=args.concurrency)
    # The operations port is served here, not by the pool: readiness includes PostgreSQL.
    ops_address = _ops_address(args, worker_settings)
    worker_settings = worker_settings.model_copy(update={"status_port": None})

    api_keys = _api_keys(config)

    async def main(stop: asyncio.Event) -> None:
        await _import_config_prices(config)
        engine = create_engine(DatabaseSettings())
        # One pooled transport per route (proxy, TLS, HTTP/2): workers/providers/http.py.
        transports = ProviderTransports(
            max_connections=worker_settings.worker_concurrency,
            proxies=ProxyEnvironment.from_environ(os.environ))
        async with transports:
            providers = {
                name: build_provider(name, deployment, transports.for_deployment(name, deployment),
                                     api_keys.get(name))
                for name, deployment in config.deployments.items()
            }
            kafka = await with_broker_limits(KafkaSettings())
            # Kafka-native requests signed by an API key are checked against the keys, and
            # admitted under the key's and tenant's limits like requests at ingress.
            provenance = RequestProvenance(kafka, PostgresKeyLookup(engine))
            pool = InferencePool(
                kafka, worker_settings, config, models, providers,
                PostgresFinalResults(engine), budgets=PostgresBudgetStore(engine),
                provenance=provenance,
                native_admission=NativeAdmission(postgres_admission(engine, config),
                                                 provenance),
                tenant_weights=TenantWeights(partial(tenant_weights, engine)),
            )
            readiness = _readiness(engine, kafka, consumers=flag(
                pool.ready, "request consumers have not joined their groups yet"))
            async with _ops_server(ops_address, readiness, snapshot=pool.status):
                await asyncio.gather(pool.run(stop), WorkerHeartbeat(engine, pool.state).run(stop))
        await engine.dispose()

    return run_until_signalled(main)


def run_ledger(args: argparse.Namespace) -> int:
    """`sluice ledger`: record usage and results in PostgreSQL."""
    from broker.batches.settings import BatchSettings
    from broker.stores.database import create_engine
    from workers.batches import BatchTracker
    from workers.batches.native import native_upstreams
    from workers.inference.provenance import PostgresKeyLookup, RequestProvenance
    from workers.ledger import ContentRetention, Ledger, StaleHolds
    from workers.providers import ProviderTransports, ProxyEnvironment

    configure_logging(service="sluice-ledger")
    metrics.configure(MetricsSettings())
    settings = LedgerSettings()
    ops_address = _ops_address(args)
    client_id = _instance_client_id("sluice-ledger")  # its own: readiness finds it in the group
    # Optional here: with it, batch holds are estimated exactly as admission estimates, and
    # `batch: native` deployments get their lines sent to the provider's batch API.
    path = AppSettings().config
    config = load_config(path) if path is not None else None
    api_keys = _api_keys(config) if config is not None else {}
    proxies = ProxyEnvironment.from_environ(os.environ)

    async def main(stop: asyncio.Event) -> None:
        engine = create_engine(DatabaseSettings())
        kafka = await with_broker_limits(KafkaSettings())
        ledger = Ledger(kafka, settings, engine, client_id=client_id,
                        provenance=RequestProvenance(kafka, PostgresKeyLookup(engine)))
        readiness = _readiness(engine, kafka, group=(ledger.group_id, client_id))
        try:  # the batch tracker (OpenAI Batch API) runs beside the ledger, same database
            async with _ops_server(ops_address, readiness), ProviderTransports(
                    max_connections=_NATIVE_BATCH_CONNECTIONS, proxies=proxies) as transports:
                upstreams = native_upstreams(config, transports.for_deployment, api_keys)
                await asyncio.gather(
                    ledger.run(stop),
                    # Privacy: completion text past its retention (`workers.ledger.retention`).
                    ContentRetention(engine, settings).run(stop),
                    # Holds of requests that can no longer finish (`workers.ledger.holds`).
                    StaleHolds(engine, settings).run(stop),
                    BatchTracker(kafka, BatchSettings(), engine, config, upstreams).run(stop))
        finally:
            await engine.dispose()

    return run_until_signalled(main)


def run_deliver(args: argparse.Namespace) -> int:
    """`sluice deliver`: POST signed webhooks (Standard Webhooks) for final results."""
    from broker.stores.database import create_engine
    from broker.webhooks.settings import WebhookSettings
    from workers.deliver import Deliverer
    from workers.deliver.sender import WebhookSender, new_client

    configure_logging(service="sluice-deliver")
    metrics.configure(MetricsSettings())
    settings = WebhookSettings()
    ops_address = _ops_address(args)
    client_id = _instance_client_id("sluice-deliver")  # its own: readiness finds it in the group

    async def main(stop: asyncio.Event) -> None:
        engine = create_engine(DatabaseSettings())
        kafka = KafkaSettings()
        try:
            async with new_client(settings) as client:
                sender = WebhookSender(client, settings)
                deliverer = Deliverer(kafka, settings, engine, sender, client_id=client_id)
                readiness = _readiness(engine, kafka, group=(deliverer.group_id, client_id))
                async with _ops_server(ops_address, readiness):
                    await deliverer.run(stop)
        finally:
            await engine.dispose()

    return run_until_signalled(main)


def run_migrate(args: argparse.Namespace) -> int:
    """`sluice migrate`: bring the database schema to the latest version."""
    from broker.stores.database import upgrade_database

    url = DatabaseSettings().database_url
    asyncio.run(upgrade_database(url))
    print("database is at the latest schema version; next: sluice ledger / sluice ingress")
    return 0


def run_mock_provider(args: argparse.Namespace) -> int:
    """`sluice mock-provider`: the simulated OpenAI-compatible provider."""
    from simulator import SimulatorSettings, serve_simulator

    settings = SimulatorSettings(
        latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, output_tokens=args.output_tokens,
        answer_bytes=args.answer_bytes,
        rpm=args.rpm, tpm=args.tpm, window_s=args.window_s,
        **({"faults": json.loads(args.faults)} if args.faults else {}),
    )
    print(f"simulated provider on http://{args.host}:{args.port}/v1 (stats: /stats)", flush=True)
    serve_simulator(settings, args.host, args.port)
    return 0


def run_schemas_export(args: argparse.Namespace) -> int:
    """`sluice schemas export DIR`: one JSON Schema file per message."""
    from schemas.export import json_schemas

    directory: Path = args.directory
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (directory / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
        print(f"wrote {directory / f'{name}.schema.json'}")
    from broker.asyncapi import asyncapi_document
    from schemas import Topics

    document = asyncapi_document(Topics(KafkaSettings().topic_prefix), ["{model}"])
    (directory / "asyncapi.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {directory / 'asyncapi.json'}")
    return 0


def run_config_check(args: argparse.Namespace) -> int:
    """`sluice config check FILE`: validate and summarise a config file."""
    config = load_config(args.file)
    for model, spec in config.models.items():
        print(f"{model}: {' -> '.join(spec.deployments)}")
    print(f"{args.file}: OK ({len(config.models)} models, {len(config.deployments)} deployments)")
    return 0



_NATIVE_BATCH_CONNECTIONS = 4
"""Connections per provider route for the native batch lane: a few uploads, polls and
downloads at a time, never a stream of calls."""


def _api_keys(config: SluiceConfig) -> dict[str, str]:
    """Each deployment's secret from the variable its `api_key_env` names, read once here."""
    keys = {}
    for name, deployment in config.deployments.items():
        if deployment.api_key_env is None:
            continue
        secret = os.environ.get(deployment.api_key_env)
        if secret:
            keys[name] = secret
        else:
            log.error("deployments.%s: %s is not set; its calls go without a key, will be "
                      "refused and failed over. Set it in the worker's environment.",
                      name, deployment.api_key_env)
    return keys


async def _import_config_prices(config: SluiceConfig) -> None:
    """Put the config file's prices into the price catalog, the one price source."""
    from broker.errors import DatabaseUnavailable
    from broker.stores.database import create_engine
    from broker.stores.prices import import_config_prices

    engine = create_engine(DatabaseSettings())
    try:
        stored = await import_config_prices(engine, config, datetime.now(UTC))
    except DatabaseUnavailable as exc:
        log.warning("prices from the config file not imported (%s); calls are charged at the "
                    "catalog's prices until a worker or ingress starts with PostgreSQL up", exc)
        return
    finally:
        await engine.dispose()
    for price in stored:
        log.info("price catalog: %s on %s is now %s / %s USD per million tokens in / out, "
                 "from the config file", price.model, price.deployment,
                 price.input_usd_per_mtok, price.output_usd_per_mtok)


def _ops_address(args: argparse.Namespace,
                 worker: WorkerSettings | None = None) -> tuple[str, int] | None:
    """Where this process serves /livez, /readyz, /status and /metrics, if anywhere.

    `--ops-port` (alias `--status-port`, `--metrics-port`), else `SLUICE_OPS_PORT`, else a
    worker's older `SLUICE_STATUS_PORT`.
    """
    app = AppSettings()
    port = getattr(args, "ops_port", None)
    if port is None:
        port = app.ops_port
    if port is None and worker is not None and worker.status_port is not None:
        return worker.status_host, worker.status_port
    return None if port is None else (app.ops_host, port)


def _instance_client_id(name: str) -> str:
    """A Kafka client id naming this process, so readiness can find its consumer."""
    return f"{name}-{socket.gethostname()}-{os.getpid()}"


def _readiness(engine: AsyncEngine, kafka: KafkaSettings, *, consumers: Check | None = None,
               group: tuple[str, str] | None = None) -> Readiness:
    """What "ready" means for a process reading Kafka and writing PostgreSQL.

    `consumers`: an in-process check that its consumers own their partitions (workers);
    `group`: (group id, client id) to find its consumer in its group (ledger, deliver).
    Probes that leave the process are cached (`CachedProbe`): probes cost at most one
    `SELECT 1` and one Kafka round trip every two seconds.
    """
    from broker.kafka.groups import group_membership, ping_kafka
    from broker.stores.health import ping_database

    checks: dict[str, Check] = {}
    if group is not None:
        checks["kafka"] = CachedProbe(partial(group_membership, kafka, *group))
    else:
        checks["kafka"] = CachedProbe(partial(ping_kafka, kafka))
    if consumers is not None:
        checks["kafka_consumers"] = consumers
    checks["postgres"] = CachedProbe(partial(ping_database, engine))
    return Readiness(checks)


def _ops_server(address: tuple[str, int] | None, readiness: Readiness, *,
                snapshot: Snapshot | None = None) -> AbstractAsyncContextManager[object]:
    """The process's operations port while the block runs (nothing without an address)."""
    if address is None:
        return contextlib.nullcontext()
    host, port = address
    log.info("operations port on http://%s:%d (/livez /readyz /status /metrics)", host, port)
    return OpsServer(host, port, readiness=readiness, snapshot=snapshot,
                     metrics=metrics.exposition)
