"""An in-process sluicegate stack on the session's real Kafka and PostgreSQL.

Ingress (through its ASGI app), an inference pool, the ledger, and the simulated provider
served over HTTP semantics (httpx ASGI transport) all share the test's event loop; what
crosses Kafka and PostgreSQL is real.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from openai import AsyncOpenAI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.admission import postgres_admission
from broker.batches.settings import BatchSettings
from broker.config import SluiceConfig, parse_config
from broker.settings import (
    DatabaseSettings,
    IngressSettings,
    KafkaSettings,
    LedgerSettings,
    WorkerSettings,
)
from broker.stores.database import create_engine
from broker.stores.keys import create_api_key
from broker.stores.notifications import FinalResultListener
from broker.stores.prices import import_config_prices
from broker.webhooks.settings import WebhookSettings
from ingress.app import Ingress, create_app
from ingress.hot_routes import serve
from ingress.postgres import PostgresApiKeys, PostgresRequests
from ingress.services import IngressServices, LedgerAccess
from simulator import SimulatorSettings, create_simulator_app
from workers.inference import InferencePool
from workers.inference.native_admission import NativeAdmission
from workers.inference.provenance import PostgresKeyLookup, RequestProvenance
from workers.inference.results import PostgresFinalResults
from workers.ledger import Ledger
from workers.providers import build_provider

T = TypeVar("T")

SIM_BASE = "http://simulator"
SIM_API_KEY = "sim-provider-key"


def demo_config(**deployment: Any) -> SluiceConfig:
    """One model, `gpt-4o-mini`, served by the simulator over the OpenAI-compatible adapter."""
    return parse_config({
        "models": {"gpt-4o-mini": {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "openai", "base_url": f"{SIM_BASE}/v1",
                                "model": "gpt-4o-mini", "input_usd_per_mtok": "0.15",
                                "output_usd_per_mtok": "0.60", **deployment}},
    })


@dataclass
class Stack:
    """Handles a test uses to drive and inspect the running stack."""

    client: httpx.AsyncClient
    api_key: str
    engine: AsyncEngine
    simulator: httpx.AsyncClient
    kafka: KafkaSettings
    ingress: Ingress

    @property
    def auth(self) -> dict[str, str]:
        """Headers carrying this stack's API key."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def openai(self, api_key: str | None = None) -> AsyncOpenAI:
        """The official async SDK, talking to this stack's ingress in-process (no retries:
        a test sees the first answer). Close it when done."""
        return AsyncOpenAI(base_url="http://ingress/v1", api_key=api_key or self.api_key,
                           max_retries=0,
                           http_client=httpx.AsyncClient(transport=self.client._transport))

    async def scalar(self, sql: str, **params: Any) -> Any:
        """One value from the ledger database."""
        async with self.engine.connect() as connection:
            return (await connection.execute(text(sql), params)).scalar()


async def _stopped(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait for the stack's services to end; past `timeout_s`, fail naming what still runs.

    A service that does not stop is a bug, and a bare TimeoutError would not say where: the
    failure carries the stack of every task still alive.
    """
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    if not pending:
        return
    current = asyncio.current_task()
    stacks = []
    for task in asyncio.all_tasks():
        if task is not current and not task.done():
            out = io.StringIO()
            task.print_stack(file=out)
            stacks.append(out.getvalue())
    for task in pending:
        task.cancel()
    raise AssertionError(f"the stack did not stop within {timeout_s:.0f} s; still running:\n"
                         + "\n".join(stacks))


async def _ready(pool: InferencePool) -> bool:
    return pool.ready()


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 15.0) -> T:
    """Poll `check` until it returns a truthy value; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout_s
    value = await check()
    while not value and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = await check()
    assert value, f"condition not reached in {timeout_s}s (last value: {value!r})"
    return value


@asynccontextmanager
async def running_stack(
    kafka: KafkaSettings,
    database_url: str,
    *,
    config: SluiceConfig | None = None,
    simulator: SimulatorSettings | None = None,
    ingress: IngressSettings | None = None,
    ingress_kafka: KafkaSettings | None = None,
    worker: WorkerSettings | None = None,
    tenant: str = "acme",
) -> AsyncIterator[Stack]:
    """Start ledger, worker pool and ingress; stop them all on exit."""
    config = config or demo_config()
    engine = create_engine(DatabaseSettings(database_url=database_url))
    api_key, _ = await create_api_key(engine, tenant)
    # What `sluice worker` and `sluice ingress` do at start: the catalog is the price source.
    await import_config_prices(engine, config, datetime.now(UTC))
    sim_app = create_simulator_app(simulator or SimulatorSettings())
    sim_transport = httpx.ASGITransport(app=sim_app)
    sim_client = httpx.AsyncClient(transport=sim_transport, base_url=SIM_BASE)
    # Every deployment gets a key: the simulator's Anthropic, Gemini and Azure doors
    # refuse calls without one, as the real APIs do.
    providers = {
        name: build_provider(name, deployment, sim_transport, api_key=SIM_API_KEY)
        for name, deployment in config.deployments.items()
    }
    stop = asyncio.Event()
    provenance = RequestProvenance(kafka, PostgresKeyLookup(engine))
    pool = InferencePool(kafka, worker or WorkerSettings(), config, list(config.models), providers,
                         PostgresFinalResults(engine),
                         provenance=provenance,
                         native_admission=NativeAdmission(postgres_admission(engine, config),
                                                          provenance))
    tasks = [
        asyncio.create_task(pool.run(stop)),
        asyncio.create_task(Ledger(kafka, LedgerSettings(), engine,
                                   provenance=provenance).run(stop)),
    ]
    app = create_app(IngressServices(
        settings=ingress or IngressSettings(sync_timeout_s=20),
        kafka=ingress_kafka or kafka,
        config=config,
        api_keys=PostgresApiKeys(engine),
        requests=PostgresRequests(engine),
        # Read here, at the test's edge, so a test's monkeypatched SLUICE_* reach them.
        webhooks=WebhookSettings(),
        batches=BatchSettings(),
        ledger=LedgerAccess(engine),
        admission=postgres_admission(engine, config),
        announcements=FinalResultListener(engine),
    ))
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=serve(app)), base_url="http://ingress", timeout=30
        ) as client:
            # Every model's consumer joined before the first request: with many models a
            # slow broker (Tansu) takes seconds per group, longer than a sync wait.
            await eventually(lambda: _ready(pool), 60)
            yield Stack(client, api_key, engine, sim_client, kafka, app.state.ingress)
    finally:
        stop.set()
        try:
            await _stopped(tasks, 60)
        finally:  # a stack that did not stop still closes what the test opened
            await sim_client.aclose()
            await engine.dispose()
