"""One trace per request: W3C trace context through Kafka record headers and HTTP headers,
and the spans of ingress, the worker and the ledger joined into it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from broker.batches.settings import BatchSettings
from broker.config import parse_config
from broker.errors import ProviderRetriable
from broker.kafka import Record
from broker.settings import IngressSettings, KafkaSettings, WorkerSettings
from broker.telemetry.tracing import (
    consumer_span,
    context_from,
    context_from_kafka,
    kafka_trace_headers,
    tracer,
)
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.hot_routes import serve
from ingress.services import IngressServices, Principal, StoredRequest
from schemas import ChatCompletionRequest, ChatMessage, InferenceRequest
from tests.spans import named, parent_id, recorded_spans
from workers.inference import InferencePool
from workers.inference.processor import RequestProcessor
from workers.inference.results import NoResultsOfRecord
from workers.ledger.tracing import traced_apply
from workers.providers import ProviderResponse
from workers.providers.simulated import SimulatedProvider
from workers.providers.trace_context import TraceContextTransport

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
CALLER = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=42"}
PROMPT = "Tell nobody: the secret is tangerine."
CONFIG = parse_config({
    "models": {"m": {"deployments": ["sim"]}},
    "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}},
})


def test_trace_context_round_trips_through_kafka_record_headers() -> None:
    with recorded_spans() as spans:
        caller = context_from(CALLER)
        with tracer().start_as_current_span("ingress", context=caller) as sender:
            headers = [("correlation_id", b"req_1"), *kafka_trace_headers()]
        assert dict(headers)["tracestate"] == b"vendor=42"  # tracestate travels along
        received = trace.get_current_span(context_from_kafka(headers)).get_span_context()
        assert received.is_remote
        assert received.trace_id == sender.get_span_context().trace_id
        assert received.span_id == sender.get_span_context().span_id
        with consumer_span("sluice.requests.m", headers) as worker:
            pass
    worker_span = named(spans.get_finished_spans(), "process sluice.requests.m")
    assert worker_span.context.trace_id == int(CALLER_TRACE, 16)
    assert parent_id(worker_span) == sender.get_span_context().span_id
    assert worker.get_span_context().span_id == worker_span.context.span_id
    assert worker_span.kind is trace.SpanKind.CONSUMER


def test_without_a_tracer_a_callers_trace_context_passes_through_unchanged() -> None:
    record_headers = [(name, value.encode()) for name, value in CALLER.items()]
    with consumer_span("sluice.requests.m", record_headers):
        onward = kafka_trace_headers()
    assert onward == record_headers
    with consumer_span("sluice.requests.m", [("correlation_id", b"x")]):
        assert kafka_trace_headers() == []  # nothing to pass on, nothing made up


async def test_provider_calls_carry_the_current_spans_traceparent() -> None:
    seen: list[httpx.Headers] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={})

    transport = TraceContextTransport(httpx.MockTransport(upstream))
    with recorded_spans():
        with tracer().start_as_current_span("chat gpt-4o-mini") as span:
            await transport.handle_async_request(httpx.Request("POST", "http://p.invalid/v1"))
        await transport.handle_async_request(httpx.Request("POST", "http://p.invalid/v1"))
    context = span.get_span_context()
    flags = int(context.trace_flags)
    assert seen[0]["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}")
    assert "traceparent" not in seen[1]  # no span, no header


class _OneKey:
    async def principal(self, secret: str, *, cached_only: bool = False) -> Principal | None:
        return Principal(tenant="acme", api_key_id="key_1") if secret == "sk-test" else None


class _NoLedger:
    async def find(self, request_id: str) -> StoredRequest | None:
        return None


@asynccontextmanager
async def _in_memory_stack() -> AsyncIterator[httpx.AsyncClient]:
    """Ingress and a worker pool on the in-memory Kafka port, as production wires them."""
    kafka = KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}", topic_partitions=1)
    stop = asyncio.Event()
    pool = InferencePool(kafka, WorkerSettings(), CONFIG, ["m"],
                         {"sim": SimulatedProvider("sim", CONFIG.deployments["sim"])},
                         NoResultsOfRecord())
    worker = asyncio.create_task(pool.run(stop))
    app = create_app(IngressServices(settings=IngressSettings(sync_timeout_s=10), kafka=kafka,
                                     config=CONFIG, api_keys=_OneKey(), requests=_NoLedger(),
                                     webhooks=WebhookSettings(), batches=BatchSettings()))
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=serve(app)), base_url="http://ingress",
            headers={"Authorization": "Bearer sk-test"},
        ) as client:
            yield client
    finally:
        stop.set()
        await asyncio.wait_for(worker, 20)


async def test_the_worker_continues_the_trace_ingress_started() -> None:
    with recorded_spans() as exporter:
        async with _in_memory_stack() as client:
            answer = await client.post("/v1/chat/completions", headers=CALLER, json={
                "model": "m", "messages": [{"role": "user", "content": PROMPT}]})
            assert answer.status_code == 200, answer.text
    spans = exporter.get_finished_spans()
    server = named(spans, "POST /v1/chat/completions")
    publish = named(spans, "publish sluice.requests.m")
    process = named(spans, "process sluice.requests.m")
    chat = named(spans, "chat gpt-4o-mini")
    # One trace, the caller's, and each hop the child of the one before.
    assert {span.context.trace_id for span in (server, publish, process, chat)} == {
        int(CALLER_TRACE, 16)}
    assert parent_id(server) == int(CALLER_SPAN, 16)
    assert parent_id(publish) == server.context.span_id
    assert parent_id(process) == publish.context.span_id
    assert parent_id(chat) == process.context.span_id
    assert server.attributes is not None and chat.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["sluice.request_id"] == answer.headers["x-request-id"]
    assert chat.kind is trace.SpanKind.CLIENT
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.provider.name"] == "simulated"
    assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.response.model"] == answer.json()["model"]
    usage = answer.json()["usage"]
    assert chat.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert chat.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    # Content-free: neither the prompt nor the answer in any attribute of any span.
    answer_text = answer.json()["choices"][0]["message"]["content"]
    values = " ".join(str(value) for span in spans for value in (span.attributes or {}).values())
    assert "tangerine" not in values and answer_text not in values


class _RateLimited:
    name = "openai"
    deployment = "sim"

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float
                       ) -> ProviderResponse:
        raise ProviderRetriable(f"429 from upstream: {PROMPT}", status_code=429, deployment="sim")


async def test_a_failed_provider_call_is_an_error_span_without_the_providers_words() -> None:
    body = ChatCompletionRequest(model="m", messages=[ChatMessage(role="user", content=PROMPT)])
    request = InferenceRequest(id="req_1", model="m", body=body, created_at=datetime.now(UTC))
    with recorded_spans() as exporter:
        await RequestProcessor(CONFIG, {"sim": _RateLimited()}).process(request)
    chat = named(exporter.get_finished_spans(), "chat gpt-4o-mini")
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes is not None and chat.attributes["error.type"] == "429"
    assert not chat.events  # no exception event: its message quotes the provider (and prompt)
    assert "tangerine" not in str(chat.status.description)


@dataclass
class _Record:
    topic: str
    headers: list[tuple[str, bytes]]
    partition: int = 0
    offset: int = 0


async def test_the_ledger_records_each_traced_record_in_its_requests_trace() -> None:
    written: list[int] = []

    async def write(records: list[Record]) -> None:
        written.append(len(records))

    traced = [(name, value.encode()) for name, value in CALLER.items()]
    records = [_Record("sluice.results", [("tenant", b"acme"), *traced]),
               _Record("sluice.usage", traced, offset=1), _Record("sluice.usage", [], offset=2)]
    with recorded_spans() as exporter:
        await traced_apply(write)(records)  # type: ignore[arg-type]
    spans = exporter.get_finished_spans()
    batch = named(spans, "ledger write")
    assert written == [3]
    assert len(batch.links) == 2
    for topic in ("sluice.results", "sluice.usage"):
        span = named(spans, f"record {topic}")
        assert span.context.trace_id == int(CALLER_TRACE, 16)
        assert parent_id(span) == int(CALLER_SPAN, 16)
        assert [link.context.span_id for link in span.links] == [batch.context.span_id]
    assert len(spans) == 3  # the untraced record got no span of its own


async def test_without_a_tracer_the_ledger_applies_and_records_nothing() -> None:
    written: list[int] = []

    async def write(records: list[Record]) -> None:
        written.append(len(records))

    traced = [(name, value.encode()) for name, value in CALLER.items()]
    await traced_apply(write)([_Record("sluice.usage", traced)])  # type: ignore[list-item]
    assert written == [1]
