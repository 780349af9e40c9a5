"""One estimator: admission, the worker's reservation and the batch hold count alike."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from broker.config import parse_config
from broker.estimates import DEFAULT_EXPECTED_OUTPUT_TOKENS, Estimator
from broker.stores.prices import Price, PriceBook, PriceSpec, config_price_specs
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


def _stored(specs: list[PriceSpec]) -> PriceBook:
    return PriceBook(Price(id=number, cached_input_usd_per_mtok=None, **spec.model_dump(
        exclude={"cached_input_usd_per_mtok"})) for number, spec in enumerate(specs))


def test_config_prices_reach_estimates_through_the_catalog_and_the_dearest_wins() -> None:
    estimator = Estimator(CONFIG)
    # The catalog is the one price source: a config price not in it prices nothing.
    assert estimator.for_request(BODY, "m", PriceBook([]), NOW).usd is None
    imported = config_price_specs(CONFIG, PriceBook([]), NOW)
    assert {(s.model, s.deployment, s.input_usd_per_mtok, s.output_usd_per_mtok)
            for s in imported} == {("m", "cheap", Decimal("0.15"), Decimal("0.60")),
                                   ("m", "dear", Decimal("2.50"), Decimal("10.00"))}
    book = _stored(imported)
    estimate = estimator.for_request(BODY, "m", book, NOW)
    prompt = estimate.prompt_tokens
    assert estimate.usd == (Decimal(prompt) * Decimal("2.50")
                            + Decimal(100) * Decimal("10.00")) / 1_000_000
    assert config_price_specs(CONFIG, book, NOW) == []  # in force already: nothing to import
    catalog = PriceBook([_price("m", "dear", "1.00", "1.00")])
    cheaper = estimator.for_request(BODY, "m", catalog, NOW)
    assert cheaper.usd == Decimal(prompt + 100) / 1_000_000
    # The config disagrees with the catalog's price in force: it is imported again.
    assert [s.deployment for s in config_price_specs(CONFIG, catalog, NOW)] == ["cheap", "dear"]


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


def test_an_enforced_output_cap_is_held_in_full_anywhere_in_the_chain() -> None:
    config = parse_config({
        "models": {"m": {"deployments": ["primary", "fallback"]}},
        "deployments": {
            "primary": {"provider": "simulated", "model": "gpt-4o-mini"},
            "fallback": {"provider": "simulated", "model": "gpt-4o-mini",
                         "max_output_tokens": 3000},
        },
    })
    estimator = Estimator(config)
    assert estimator.for_call(BODY, "m", "fallback").output_tokens == 3000
    assert estimator.for_call(BODY, "m", "primary").output_tokens == 256
    assert estimator.for_request(BODY, "m", PriceBook([]), NOW).output_tokens == 3000
    capped = BODY.model_copy(update={"max_tokens": 40})
    assert estimator.for_request(capped, "m", PriceBook([]), NOW).output_tokens == 40
