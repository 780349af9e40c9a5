"""Prompt-cache hits: parsed from the provider, carried on the usage event, priced by the ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from broker.config import parse_config
from broker.stores.prices import Price, PriceBook
from schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    InferenceRequest,
    Usage,
    UsageEvent,
)
from schemas.export import json_schemas
from simulator import SimulatorSettings, create_simulator_app
from simulator.answers import simulate_completion
from workers.inference.processor import RequestProcessor
from workers.ledger.pricing import charge
from workers.ledger.rows import Kind, LedgerRow, usage_row
from workers.providers import build_provider

NOW = datetime(2026, 5, 1, tzinfo=UTC)
BODY = ChatCompletionRequest(model="m", messages=[ChatMessage(role="user", content="hi")])


def usage(**changes: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "event_id": "use_1", "request_id": "r1", "tenant": "acme", "model": "m",
        "deployment": "d", "provider": "openai", "input_tokens": 12, "output_tokens": 34,
        "latency_ms": 1.0, "status": "succeeded", "started_at": NOW, "finished_at": NOW,
    }
    return UsageEvent(**(values | changes))


def _openai_completion(usage_json: dict[str, Any]) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": usage_json,
    })


@pytest.mark.parametrize(
    ("details", "cached"),
    [
        ({"prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0}}, 1024),
        ({"prompt_tokens_details": {"cached_tokens": None}}, 0),  # vLLM-style null
        ({"prompt_tokens_details": None}, 0),
        ({}, 0),
        ({"prompt_tokens_details": {"cached_tokens": 5000}}, 2000),  # never above the prompt
    ],
)
def test_usage_parses_openai_cached_tokens(details: dict[str, Any], cached: int) -> None:
    parsed = Usage.model_validate({"prompt_tokens": 2000, "completion_tokens": 5, **details})
    assert parsed.cached_prompt_tokens() == cached


def test_usage_without_details_keeps_its_wire_shape() -> None:
    assert "prompt_tokens_details" not in Usage(prompt_tokens=3).model_dump()
    with_details = Usage.model_validate({"prompt_tokens_details": {"cached_tokens": 2}})
    assert with_details.model_dump()["prompt_tokens_details"] == {"cached_tokens": 2}


async def test_worker_reports_the_providers_cached_tokens_on_the_usage_event() -> None:
    config = parse_config({
        "models": {"m": {"deployments": ["d"]}},
        "deployments": {"d": {"provider": "openai", "model": "up",
                              "base_url": "http://upstream.test/v1"}},
    })

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_openai_completion({
            "prompt_tokens": 1500, "completion_tokens": 20, "total_tokens": 1520,
            "prompt_tokens_details": {"cached_tokens": 1280},
        }))

    async with httpx.MockTransport(upstream) as transport:
        provider = build_provider("d", config.deployments["d"], transport)
        processor = RequestProcessor(config, {"d": provider})
        outcome = await processor.process(
            InferenceRequest(id="r1", model="m", body=BODY, created_at=datetime.now(UTC))
        )
    [event] = outcome.usage
    assert (event.input_tokens, event.cached_input_tokens, event.output_tokens) == (1500, 1280, 20)


def test_usage_event_cached_tokens_default_and_bounds() -> None:
    assert usage().cached_input_tokens == 0  # events of older producers still validate
    assert usage(cached_input_tokens=12).cached_input_tokens == 12
    with pytest.raises(ValidationError, match="must not exceed input_tokens"):
        usage(input_tokens=10, cached_input_tokens=11)
    with pytest.raises(ValidationError):
        usage(cached_input_tokens=-1)


def test_json_schema_exports_cached_input_tokens() -> None:
    schemas = json_schemas()
    field = schemas["UsageEvent"]["properties"]["cached_input_tokens"]
    assert field["minimum"] == 0 and field["default"] == 0
    assert "cached_input_tokens" not in schemas["UsageEvent"]["required"]


def _row(**changes: Any) -> LedgerRow:
    event = usage(**changes)
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        "t", 0, 0, 0, 0, b"k", b"{}", None, 1, 2, ())
    return LedgerRow(Kind.USAGE, event.event_id, usage_row(event), record)


def _book(cached_price: str | None) -> PriceBook:
    cached = Decimal(cached_price) if cached_price is not None else None
    return PriceBook([Price(7, "m", None, Decimal("2.50"), Decimal("10"), cached, "USD", NOW)])


def test_usage_row_carries_cached_tokens() -> None:
    assert _row(input_tokens=100, cached_input_tokens=60).values["cached_input_tokens"] == 60


def test_cached_tokens_are_charged_the_cached_price() -> None:
    row = _row(input_tokens=1_000_000, output_tokens=100_000, cached_input_tokens=800_000)
    charge(_book("1.25"), [row])
    # 200k uncached at $2.50/M + 800k cached at $1.25/M + 100k output at $10/M
    assert row.values["cost_usd"] == Decimal("0.5") + Decimal("1.0") + Decimal("1.0")
    assert row.values["price_id"] == 7


def test_without_a_cached_price_cached_tokens_cost_the_input_price() -> None:
    row = _row(input_tokens=1_000_000, output_tokens=100_000, cached_input_tokens=800_000)
    charge(_book(None), [row])
    assert row.values["cost_usd"] == Decimal("2.5") + Decimal("1.0")


def test_simulator_reports_cached_tokens_only_when_asked() -> None:
    plain = simulate_completion(BODY, upstream_model="gpt-4o-mini")
    assert plain.usage is not None and plain.usage.cached_prompt_tokens() == 0
    assert "prompt_tokens_details" not in plain.model_dump()["usage"]
    cached = simulate_completion(BODY, upstream_model="gpt-4o-mini", cached_share=0.5)
    assert cached.usage is not None
    assert cached.usage.cached_prompt_tokens() == cached.usage.prompt_tokens // 2


async def test_http_simulator_setting_reaches_the_wire() -> None:
    app = create_simulator_app(SimulatorSettings(cached_input_share=1.0))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        response = await client.post("/v1/chat/completions", json=BODY.model_dump())
    completion = ChatCompletion.model_validate_json(response.content)
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.cached_prompt_tokens() == completion.usage.prompt_tokens
