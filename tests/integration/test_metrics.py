"""Prometheus metrics of a real stack: requests through ingress, worker, provider, ledger.

Every component here runs in the test's process, so ingress's `GET /metrics` and the
worker's exposition (`broker.metrics.exposition`, what `sluice worker` serves on its
operations port) render one registry: counts are compared before and after, since other
tests of the session count too.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from broker import metrics
from broker.settings import KafkaSettings
from tests.integration.stack import Stack, eventually, running_stack

# A gateway feature above the Kafka port: on the production engine only (the port's own
# behaviour is proven on both engines by tests/kafka_contract.py and the pipeline tests),
# which keeps CI within its time.
pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

MODEL = "gpt-4o-mini"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "Metrics, please."}]}
SENT = 3
FINAL = {"model": MODEL, "status": "succeeded", "lane": "interactive", "tenant": ""}
CALL = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "gpt-4o-mini", "deployment": "sim", "error_type": ""}


def _parse(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], family: str, series: str, **labels: str) -> float:
    """The value of `series` with exactly `labels` (0 when it does not exist yet)."""
    found = families.get(family)
    samples: Iterable[tuple[str, dict[str, str], float]] = (
        (s.name, s.labels, s.value) for s in (found.samples if found else []))
    return next((v for name, have, v in samples if name == series and have == labels), 0.0)


async def _scrape(stack: Stack) -> dict[str, Metric]:
    response = await stack.client.get("/metrics")  # Prometheus sends no key
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return _parse(response.text)


def _worker() -> dict[str, Metric]:
    body, _ = metrics.exposition()
    return _parse(body.decode())


async def test_requests_latency_tokens_spend_and_queue_depth_are_exposed(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    before = _worker()
    spent_before = value(before, "sluice_spend_usd", "sluice_spend_usd_total", model=MODEL,
                         deployment="sim", tenant="")
    async with running_stack(kafka_settings, database_url) as stack:
        prompt_tokens = 0
        for _ in range(SENT):
            response = await stack.client.post("/v1/chat/completions", json=HELLO,
                                               headers=stack.auth)
            assert response.status_code == 200, response.text
            prompt_tokens += response.json()["usage"]["prompt_tokens"]

        async def recorded() -> float | None:  # the ledger priced and wrote the three calls
            rows, cost = await stack.scalar(
                "select json_build_array(count(*), sum(cost_usd)::float) from usage_events "
                "where model = :m", m=MODEL)
            spent = value(_worker(), "sluice_spend_usd", "sluice_spend_usd_total",
                          model=MODEL, deployment="sim", tenant="") - spent_before
            # Counted once the batch is durable, a moment after its rows are visible.
            return cost if rows == SENT and spent == pytest.approx(cost) else None

        cost = await eventually(recorded, 30)
        group = f"{kafka_settings.topic_prefix}workers.{MODEL}"
        depth = {"model": MODEL, "lane": "interactive", "group": group,
                 "topic": f"{kafka_settings.topic_prefix}requests.{MODEL}"}

        async def drained() -> dict[str, Metric] | None:  # every request committed
            families = await _scrape(stack)
            present = any(s.labels == depth for s in
                          families["sluice_queue_depth_messages"].samples)
            return families if present and value(
                families, "sluice_queue_depth_messages", "sluice_queue_depth_messages",
                **depth) == 0 else None

        scraped = await eventually(drained, 30)
        assert scraped is not None

    # The worker counted each final result in its lane, with its latency.
    assert value(scraped, "sluice_requests", "sluice_requests_total", **FINAL) == value(
        before, "sluice_requests", "sluice_requests_total", **FINAL) + SENT
    latency = {k: v for k, v in FINAL.items() if k != "tenant"}
    assert value(scraped, "sluice_request_duration_seconds",
                 "sluice_request_duration_seconds_count", **latency) == value(
        before, "sluice_request_duration_seconds", "sluice_request_duration_seconds_count",
        **latency) + SENT
    assert value(scraped, "sluice_request_duration_seconds",
                 "sluice_request_duration_seconds_bucket", **latency, le="+Inf") >= SENT
    assert value(scraped, "sluice_queue_wait_seconds", "sluice_queue_wait_seconds_count",
                 model=MODEL, lane="interactive") >= SENT
    # Provider calls under their GenAI names, and the tokens the ledger billed.
    assert value(scraped, "gen_ai_client_operation_duration_seconds",
                 "gen_ai_client_operation_duration_seconds_count", **CALL) == value(
        before, "gen_ai_client_operation_duration_seconds",
        "gen_ai_client_operation_duration_seconds_count", **CALL) + SENT
    tokens = {k: v for k, v in CALL.items() if k != "error_type"}
    assert value(scraped, "gen_ai_client_token_usage", "gen_ai_client_token_usage_sum",
                 **tokens, gen_ai_token_type="input") == value(
        before, "gen_ai_client_token_usage", "gen_ai_client_token_usage_sum", **tokens,
        gen_ai_token_type="input") + prompt_tokens
    billed = {"model": MODEL, "deployment": "sim", "direction": "input", "tenant": ""}
    assert value(scraped, "sluice_tokens", "sluice_tokens_total", **billed) == value(
        before, "sluice_tokens", "sluice_tokens_total", **billed) + prompt_tokens
    # Spend: what the ledger wrote into usage_events (this test's database holds only ours).
    spent = value(scraped, "sluice_spend_usd", "sluice_spend_usd_total", model=MODEL,
                  deployment="sim", tenant="") - spent_before
    assert spent == pytest.approx(cost)
    assert value(scraped, "sluice_ledger_rows", "sluice_ledger_rows_total", kind="usage") >= SENT
    assert value(scraped, "sluice_ledger_lag_seconds", "sluice_ledger_lag_seconds_count",
                 kind="usage") >= SENT
    assert value(scraped, "sluice_breaker_state", "sluice_breaker_state",
                 deployment="sim") == 0
    # No request id or key anywhere in a label.
    for family in scraped.values():
        for sample in family.samples:
            assert not any(v.startswith(("req_", "chatcmpl", "key_"))
                           for v in sample.labels.values()), sample
