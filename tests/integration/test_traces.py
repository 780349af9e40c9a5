"""One chat request, one trace: ingress → Kafka → worker → provider → Kafka → ledger, on
real Kafka and PostgreSQL, with spans recorded in memory."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from broker.config import DeploymentConfig
from broker.kafka import topics_for
from broker.settings import KafkaSettings
from broker.telemetry.tracing import context_from
from tests.integration import stack as stack_module
from tests.integration.stack import eventually, running_stack
from tests.spans import named, parent_id, recorded_spans
from workers.providers import Provider, build_provider
from workers.providers.trace_context import TraceContextTransport

pytestmark = pytest.mark.integration
PROMPT = "Keep this between us: the passphrase is marmalade."


class _Recording(httpx.AsyncBaseTransport):
    """What the simulator received: the headers of every call."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.headers: list[httpx.Headers] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(httpx.Headers(request.headers))
        return await self.inner.handle_async_request(request)


async def test_one_chat_request_is_one_trace_from_ingress_to_the_ledger(
    kafka_settings: KafkaSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recordings: list[_Recording] = []

    def traced_provider(name: str, config: DeploymentConfig, transport: httpx.AsyncBaseTransport,
                        api_key: str | None = None) -> Provider:
        # As `ProviderTransports` wraps every transport it builds (workers/providers/http.py).
        recordings.append(_Recording(transport))
        return build_provider(name, config, TraceContextTransport(recordings[-1]), api_key)

    monkeypatch.setattr(stack_module, "build_provider", traced_provider)
    topics = topics_for(kafka_settings)
    with recorded_spans() as exporter:
        async with running_stack(kafka_settings, database_url) as stack:
            answer = await stack.client.post("/v1/chat/completions", headers=stack.auth, json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]})
            assert answer.status_code == 200, answer.text

            def ledger_spans() -> list[ReadableSpan]:
                return [span for span in exporter.get_finished_spans()
                        if span.name in (f"record {topics.results}", f"record {topics.usage}")]

            async def both_recorded() -> bool:
                return len(ledger_spans()) == 2

            await eventually(both_recorded, 30)
    spans = exporter.get_finished_spans()
    server = named(spans, "POST /v1/chat/completions")
    chat = named(spans, "chat gpt-4o-mini")
    hops = [server, named(spans, f"publish {topics.requests('gpt-4o-mini')}"),
            named(spans, f"process {topics.requests('gpt-4o-mini')}"), chat, *ledger_spans()]
    trace_id = server.context.trace_id
    assert {span.context.trace_id for span in hops} == {trace_id}
    assert server.attributes is not None
    assert server.attributes["sluice.request_id"] == answer.headers["x-request-id"]
    for ledger_span in ledger_spans():  # the ledger's record of the result and the usage
        assert parent_id(ledger_span) in {span.context.span_id for span in hops[1:4]}

    assert chat.attributes is not None
    expected = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini", "server.address": "simulator",
                "gen_ai.usage.input_tokens": answer.json()["usage"]["prompt_tokens"],
                "gen_ai.usage.output_tokens": answer.json()["usage"]["completion_tokens"],
                "gen_ai.response.model": answer.json()["model"]}
    assert {name: chat.attributes.get(name) for name in expected} == expected
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    answer_text = answer.json()["choices"][0]["message"]["content"]
    values = " ".join(str(value) for span in spans for value in (span.attributes or {}).values())
    assert "marmalade" not in values and answer_text not in values

    # The simulator was called in the same trace, as a child of the `chat` span.
    sent = [headers for recording in recordings for headers in recording.headers]
    assert len(sent) == 1
    upstream = trace.get_current_span(context_from(dict(sent[0]))).get_span_context()
    assert (upstream.trace_id, upstream.span_id) == (trace_id, chat.context.span_id)
