"""Each Prometheus metric moves when its event happens (in-memory Kafka, fakes).

Every component of a process shares prometheus_client's default registry, so the tests
read a sample before and after the event and compare: other tests may have counted too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import httpx
import pytest
from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from broker import metrics
from broker.batches.settings import BatchSettings
from broker.budgets import BucketShape, MemoryBudgetStore
from broker.config import SluiceConfig, parse_config
from broker.errors import ProviderRetriable
from broker.kafka import new_producer
from broker.metrics import MetricsSettings
from broker.ops import Readiness
from broker.settings import IngressSettings, KafkaSettings, WorkerSettings
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.hot_routes import serve
from ingress.services import IngressServices, Principal, StoredRequest
from schemas import (
    ChatCompletionRequest,
    EmbeddingRequest,
    InferenceResult,
    Lane,
    RequestStatus,
    Topics,
)
from workers.deliver import Deliverer
from workers.deliver.policy import AttemptOutcome
from workers.deliver.store import Claimed
from workers.inference import InferencePool
from workers.inference.lanes import BudgetGates
from workers.inference.results import NoResultsOfRecord
from workers.ledger.metered import observe_batch
from workers.ledger.rows import Kind, LedgerBatch, LedgerRow, Poison
from workers.providers import ProviderResponse
from workers.providers.base import ChunkSink
from workers.providers.simulated import SimulatedProvider

KEY = "sk-test"
HELLO = {"model": "m", "messages": [{"role": "user", "content": "Count my tokens, please."}]}


def sample(name: str, **labels: str) -> float:
    """A sample's value now (0 when the series does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metrics_settings() -> Iterator[None]:
    """Whatever a test configures is undone after it (the settings are process-wide)."""
    before = metrics.settings()
    yield
    metrics.configure(before)


class _OneKey:
    async def principal(self, secret: str, *, cached_only: bool = False) -> Principal | None:
        return Principal(tenant="acme", api_key_id="key_1") if secret == KEY else None


class _NoLedger:
    async def find(self, request_id: str) -> StoredRequest | None:
        return None


class _Down:
    """A deployment that answers 503 to every call."""

    name = "openai"

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float,
                       ) -> ProviderResponse:
        raise ProviderRetriable("upstream 503", status_code=503, deployment=self.deployment)

    async def stream(self, body: ChatCompletionRequest, *, timeout_s: float,
                     on_chunk: ChunkSink) -> ProviderResponse:
        raise ProviderRetriable("upstream 503", status_code=503, deployment=self.deployment)

    async def embed(self, body: EmbeddingRequest, *, timeout_s: float) -> ProviderResponse:
        raise ProviderRetriable("upstream 503", status_code=503, deployment=self.deployment)


@dataclass
class _Stack:
    client: httpx.AsyncClient
    kafka: KafkaSettings
    pool: InferencePool


@asynccontextmanager
async def _stack(config: SluiceConfig, providers: Mapping[str, Any]) -> AsyncIterator[_Stack]:
    kafka = KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}", topic_partitions=2)
    stop = asyncio.Event()
    pool = InferencePool(kafka, WorkerSettings(), config, list(config.models), providers,
                         NoResultsOfRecord())
    worker = asyncio.create_task(pool.run(stop))
    app = create_app(IngressServices(settings=IngressSettings(sync_timeout_s=10), kafka=kafka,
                                     config=config, api_keys=_OneKey(), requests=_NoLedger(),
                                     webhooks=WebhookSettings(), batches=BatchSettings()))
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=serve(app)), base_url="http://ingress",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as client:
            yield _Stack(client, kafka, pool)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 20)


def _simulated() -> SluiceConfig:
    return parse_config({
        "models": {"m": {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}},
    })


GEN_AI = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "simulated",
          "gen_ai_request_model": "gpt-4o-mini", "deployment": "sim"}
FINAL = {"model": "m", "status": "succeeded", "lane": "interactive", "tenant": ""}


async def test_an_answered_request_moves_requests_latency_queue_wait_calls_and_tokens(
) -> None:
    before = {
        "requests": sample("sluice_requests_total", **FINAL),
        "latency": sample("sluice_request_duration_seconds_count",
                          **{k: v for k, v in FINAL.items() if k != "tenant"}),
        "waits": sample("sluice_queue_wait_seconds_count", model="m", lane="interactive"),
        "calls": sample("gen_ai_client_operation_duration_seconds_count", **GEN_AI,
                        error_type=""),
        "input_calls": sample("gen_ai_client_token_usage_count", **GEN_AI,
                              gen_ai_token_type="input"),
        "input": sample("sluice_tokens_total", model="m", deployment="sim", direction="input",
                        tenant=""),
        "output": sample("sluice_tokens_total", model="m", deployment="sim",
                         direction="output", tenant=""),
        "first_chunks": sample("gen_ai_client_operation_time_to_first_chunk_seconds_count",
                               **GEN_AI),
    }
    config = _simulated()
    async with _stack(config, {"sim": SimulatedProvider("sim", config.deployments["sim"])}
                      ) as stack:
        response = await stack.client.post("/v1/chat/completions", json=HELLO)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        streamed = await stack.client.post("/v1/chat/completions",
                                           json={**HELLO, "stream": True})
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        scraped = await stack.client.get("/metrics")
    assert sample("sluice_requests_total", **FINAL) == before["requests"] + 2
    assert sample("sluice_request_duration_seconds_count",
                  **{k: v for k, v in FINAL.items() if k != "tenant"}) == before["latency"] + 2
    assert sample("sluice_queue_wait_seconds_count", model="m",
                  lane="interactive") == before["waits"] + 2
    assert sample("gen_ai_client_operation_duration_seconds_count", **GEN_AI,
                  error_type="") == before["calls"] + 2
    assert sample("gen_ai_client_token_usage_count", **GEN_AI,
                  gen_ai_token_type="input") == before["input_calls"] + 2
    assert sample("gen_ai_client_operation_time_to_first_chunk_seconds_count",
                  **GEN_AI) == before["first_chunks"] + 1
    # Both calls billed the same prompt; the first one's output is the answer's.
    assert sample("sluice_tokens_total", model="m", deployment="sim", direction="input",
                  tenant="") == before["input"] + 2 * usage["prompt_tokens"]
    assert sample("sluice_tokens_total", model="m", deployment="sim", direction="output",
                  tenant="") >= before["output"] + usage["completion_tokens"]
    # The ingress serves it all, with the queue depth it measured from the in-memory Kafka.
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    depth = {(s.labels["model"], s.labels["lane"]): s.value
             for s in families["sluice_queue_depth_messages"].samples
             if s.labels["group"].startswith(stack.kafka.topic_prefix)}
    assert set(depth) == {("m", "interactive"), ("m", "batch")}
    assert "sluice_requests" in families


def _failing() -> SluiceConfig:
    return parse_config({
        "models": {"m": {"deployments": ["metrics-down"],
                         "retry": {"max_attempts": 2, "initial_backoff_s": 0.01,
                                   "max_backoff_s": 0.02}}},
        "deployments": {"metrics-down": {"provider": "openai", "base_url": "http://x/v1",
                                         "model": "gpt-4o-mini"}},
        "circuit_breaker": {"consecutive_failures": 2, "cooldown_s": 600},
    })


async def test_a_failing_deployment_moves_retries_dead_letters_breaker_and_errors() -> None:
    failed = {**FINAL, "status": "failed"}
    errors = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
              "gen_ai_request_model": "gpt-4o-mini", "deployment": "metrics-down",
              "error_type": "503"}
    before = {
        "retries": sample("sluice_retries_total", model="m"),
        "dead": sample("sluice_dead_letters_total", component="worker",
                       reason="retries_exhausted"),
        "failed": sample("sluice_requests_total", **failed),
        "errors": sample("gen_ai_client_operation_duration_seconds_count", **errors),
    }
    async with _stack(_failing(), {"metrics-down": _Down("metrics-down")}) as stack:
        response = await stack.client.post("/v1/chat/completions", json=HELLO)
        assert response.status_code == 502, response.text
        assert sample("sluice_breaker_state", deployment="metrics-down") == 2  # open
    assert sample("sluice_retries_total", model="m") == before["retries"] + 1
    assert sample("sluice_dead_letters_total", component="worker",
                  reason="retries_exhausted") == before["dead"] + 1
    assert sample("sluice_requests_total", **failed) == before["failed"] + 1
    assert sample("gen_ai_client_operation_duration_seconds_count",
                  **errors) == before["errors"] + 2


async def test_a_poison_message_is_counted_as_a_dead_letter() -> None:
    before = sample("sluice_dead_letters_total", component="worker", reason="poison")
    config = _simulated()
    async with _stack(config, {"sim": SimulatedProvider("sim", config.deployments["sim"])}
                      ) as stack:
        producer = new_producer(stack.kafka, client_id="test")
        await producer.start()
        try:
            await producer.send_and_wait(Topics(stack.kafka.topic_prefix).requests("m"),
                                         b"this is not a request", key=b"x")
        finally:
            await producer.stop()
        for _ in range(200):  # until the worker has read it (not a timing assertion)
            if sample("sluice_dead_letters_total", component="worker",
                      reason="poison") > before:
                break
            await asyncio.sleep(0.02)
    assert sample("sluice_dead_letters_total", component="worker", reason="poison") == before + 1


class _OneRound(MemoryBudgetStore):
    """Stops the gates' report loop after its first snapshot."""

    def __init__(self, stop: asyncio.Event) -> None:
        super().__init__()
        self._stop = stop

    async def snapshot(self, deployment: str, shape: BucketShape) -> dict[str, Any]:
        self._stop.set()
        return await super().snapshot(deployment, shape)


async def test_budget_gauges_follow_the_gates_snapshot() -> None:
    config = parse_config({
        "models": {"m": {"deployments": ["metrics-budget"]}},
        "deployments": {"metrics-budget": {"provider": "simulated", "model": "gpt-4o-mini",
                                           "rpm": 10}},
    })
    stop = asyncio.Event()
    gates = BudgetGates(config.deployments, _OneRound(stop))
    reservation = await gates.acquire("metrics-budget", (1.0, 0.0, 0.0, 0.0), Lane.INTERACTIVE)
    assert reservation is not None
    await gates.report(stop)  # one round: the store stops it
    limit = gates.last_snapshot["metrics-budget"]["requests"]["limit"]
    remaining = gates.last_snapshot["metrics-budget"]["requests"]["remaining"]
    assert remaining < limit
    assert sample("sluice_budget_remaining", deployment="metrics-budget",
                  dimension="requests") == remaining
    assert sample("sluice_budget_utilization_ratio", deployment="metrics-budget",
                  dimension="requests") == pytest.approx(1 - remaining / limit)


def _record(topic: str) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, 0, 0, 0, b"k", b"{}", None, 1, 2, ())


def test_a_recorded_ledger_batch_moves_rows_lag_spend_and_dead_letters() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    usage = LedgerRow(Kind.USAGE, "use_1", {
        "model": "metrics-model", "deployment": "metrics-sim", "tenant": "acme",
        "cost_usd": Decimal("0.25"), "finished_at": now - timedelta(seconds=2)},
        _record("p.usage"))
    refused = LedgerRow(Kind.USAGE, "use_2", {
        "model": "metrics-model", "deployment": "metrics-sim", "tenant": "acme",
        "cost_usd": Decimal("9"), "finished_at": now}, _record("p.usage"))
    batch = LedgerBatch()
    batch.rows[Kind.USAGE] = [usage, refused]
    batch.poison.append(Poison(_record("p.results"), "not final"))
    before = {
        "rows": sample("sluice_ledger_rows_total", kind="usage"),
        "lag": sample("sluice_ledger_lag_seconds_sum", kind="usage"),
        "spend": sample("sluice_spend_usd_total", model="metrics-model",
                        deployment="metrics-sim", tenant=""),
        "poison": sample("sluice_dead_letters_total", component="ledger", reason="poison"),
        "refused": sample("sluice_dead_letters_total", component="ledger",
                          reason="database_refused"),
    }
    observe_batch(batch, [Poison(refused.record, "refused by PostgreSQL")], now)
    assert sample("sluice_ledger_rows_total", kind="usage") == before["rows"] + 1
    assert sample("sluice_ledger_lag_seconds_sum", kind="usage") == before["lag"] + 2
    assert sample("sluice_spend_usd_total", model="metrics-model", deployment="metrics-sim",
                  tenant="") == pytest.approx(before["spend"] + 0.25)
    assert sample("sluice_dead_letters_total", component="ledger",
                  reason="poison") == before["poison"] + 1
    assert sample("sluice_dead_letters_total", component="ledger",
                  reason="database_refused") == before["refused"] + 1


class _OneDelivery:
    """The deliverer's store for one claimable delivery."""

    def __init__(self) -> None:
        self.finished: list[Any] = []

    async def claim(self, delivery: str) -> Claimed | None:
        return Claimed(id=delivery, request_id="req_1", tenant="acme",
                       url="https://hooks.example/x", payload="{}", attempt=1,
                       attempt_limit=3, secrets=["whsec_" + "A" * 32], disabled_reason=None)

    async def finish(self, claimed: Claimed, outcome: AttemptOutcome, *args: Any) -> None:
        self.finished.append(outcome)


class _Answers:
    def __init__(self, status: int | None) -> None:
        self._status = status

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> AttemptOutcome:
        if self._status is None:
            return AttemptOutcome(error="connection refused")
        return AttemptOutcome(status_code=self._status)


@pytest.mark.parametrize(("status", "outcome", "status_class"), [
    (204, "succeeded", "2xx"), (503, "retry", "5xx"), (410, "disable", "4xx"),
    (None, "retry", "network")])
async def test_each_webhook_attempt_is_counted_by_outcome(
        status: int | None, outcome: str, status_class: str) -> None:
    deliverer = Deliverer(KafkaSettings(kafka_bootstrap="memory://unused"), WebhookSettings(),
                          cast(Any, None), cast(Any, _Answers(status)))
    deliverer.store = cast(Any, _OneDelivery())
    before = sample("sluice_webhook_attempts_total", outcome=outcome, status_class=status_class)
    await deliverer.attempt("dlv_1")
    assert sample("sluice_webhook_attempts_total", outcome=outcome,
                  status_class=status_class) == before + 1


def test_the_tenant_is_a_label_only_when_configured(metrics_settings: None) -> None:
    now = datetime.now(UTC)
    result = InferenceResult(request_id="r", model="metrics-tenants",
                             status=RequestStatus.SUCCEEDED, tenant="acme", created_at=now,
                             finished_at=now)
    metrics.configure(MetricsSettings(metrics_tenant_labels=False))
    metrics.observe_final(result, Lane.BATCH)
    labels = {"model": "metrics-tenants", "status": "succeeded", "lane": "batch"}
    assert sample("sluice_requests_total", **labels, tenant="") == 1
    assert sample("sluice_requests_total", **labels, tenant="acme") == 0
    metrics.configure(MetricsSettings(metrics_tenant_labels=True))
    metrics.observe_final(result, Lane.BATCH)
    assert sample("sluice_requests_total", **labels, tenant="acme") == 1


async def test_the_operations_port_of_every_process_serves_the_registry() -> None:
    from sluice.processes import _ops_server

    server = _ops_server(("127.0.0.1", 0), Readiness({}))
    status, body, content_type = await server.answer("GET", "/metrics")  # type: ignore[attr-defined]
    assert status == 200 and content_type.startswith("text/plain")
    assert b"# TYPE sluice_requests_total counter" in body


@pytest.mark.parametrize(("enabled", "status"), [(True, 200), (False, 404)])
async def test_the_ingress_serves_metrics_without_a_key_unless_turned_off(
        metrics_settings: None, enabled: bool, status: int) -> None:
    metrics.configure(MetricsSettings(metrics_ingress=enabled))
    app = create_app(IngressServices(
        settings=IngressSettings(),
        kafka=KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}"),
        config=_simulated(), api_keys=_OneKey(), requests=_NoLedger(),
        webhooks=WebhookSettings(), batches=BatchSettings()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ingress") as client:
        response = await client.get("/metrics")  # no Authorization header
    assert response.status_code == status
    if enabled:
        assert "sluice_queue_depth_messages" in response.text
