"""One estimator: admission, the worker's reservation and the batch hold count alike."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from broker.config import parse_config
from broker.estimates import DEFAULT_EXPECTED_OUTPUT_TOKENS, Estimator
from broker.prices import Price, PriceBook
from broker.tokens import count_chat_prompt_tokens
from schemas import ChatCompletionRequest, InferenceRequest
from workers.batches.budget import BatchEstimate
from workers.inference.processor import RequestProcessor

NOW = datetime(2026, 12, 5, tzinfo=UTC)
CONFIG = parse_config({
    "models": {"m": {"deployments": ["cheap", "dear"]}},
    "deployments": {
        "cheap": {"provider": "simulated", "model": "gpt-4o-mini", "expected_output_tokens": 100,
                  "input_usd_per_mtok": "0.15", "output_usd_per_mtok": "0.60"},
        "dear": {"provider": "simulated", "model": "gpt-4o", "input_usd_per_mtok": "2.50",
                 "output_usd_per_mtok": "10.00"},
    },
})
BODY = ChatCompletionRequest.model_validate(
    {"model": "m", "messages": [{"role": "user", "content": "Estimate me, please."}]})


def _price(model: str, deployment: str | None, input_usd: str, output_usd: str) -> Price:
    return Price(id=1, model=model, deployment=deployment, input_usd_per_mtok=Decimal(input_usd),
                 output_usd_per_mtok=Decimal(output_usd), cached_input_usd_per_mtok=None,
                 currency="USD", effective_from=datetime(2026, 1, 1, tzinfo=UTC))


def test_admission_the_worker_and_a_batch_line_estimate_the_same_tokens() -> None:
    estimator = Estimator(CONFIG)
    admitted = estimator.for_request(BODY, "m", PriceBook([]), NOW)
    prompt = count_chat_prompt_tokens(BODY.messages, "gpt-4o-mini")
    assert (admitted.prompt_tokens, admitted.output_tokens) == (prompt, 100)
    reserved = RequestProcessor(CONFIG, {}).estimate(_request(), "cheap")
    assert reserved == (1.0, float(prompt + 100), float(prompt), 100.0)
    batch = BatchEstimate(PriceBook([]), estimator, at=NOW)
    batch.add(BODY)
    batch.add(BODY)
    assert (batch.tokens, batch.usd) == (2 * admitted.tokens, 2 * (admitted.usd or 0))


def test_the_dearest_deployment_prices_a_request_and_the_catalog_comes_first() -> None:
    estimator = Estimator(CONFIG)
    from_config = estimator.for_request(BODY, "m", PriceBook([]), NOW)
    prompt = from_config.prompt_tokens
    assert from_config.usd == (Decimal(prompt) * Decimal("2.50")
                               + Decimal(100) * Decimal("10.00")) / 1_000_000
    catalog = PriceBook([_price("m", "dear", "1.00", "1.00")])
    cheaper = estimator.for_request(BODY, "m", catalog, NOW)
    assert cheaper.usd == max(Decimal(prompt + 100) / 1_000_000,
                              (Decimal(prompt) * Decimal("0.15") + 100 * Decimal("0.60"))
                              / 1_000_000)


def test_without_a_config_the_model_name_and_the_catalog_decide() -> None:
    body = BODY.model_copy(update={"model": "gpt-4o-mini", "max_tokens": 40})
    book = PriceBook([_price("gpt-4o-mini", None, "1.00", "2.00")])
    estimate = Estimator(None).for_request(body, "gpt-4o-mini", book, NOW)
    prompt = count_chat_prompt_tokens(body.messages, "gpt-4o-mini")
    assert (estimate.prompt_tokens, estimate.output_tokens) == (prompt, 40)
    assert estimate.usd == (Decimal(prompt) + 80) / 1_000_000
    unpriced = Estimator(None).for_request(body.model_copy(update={"max_tokens": None}),
                                           "other", PriceBook([]), NOW)
    assert (unpriced.output_tokens, unpriced.usd) == (DEFAULT_EXPECTED_OUTPUT_TOKENS, None)


def _request() -> InferenceRequest:
    return InferenceRequest(id="req_1", model="m", body=BODY, tenant="acme", created_at=NOW)
