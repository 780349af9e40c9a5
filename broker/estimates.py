"""One estimator: the tokens and cost of a chat request before anything is known of its answer.

Admission (a key's TPM and monthly budgets at ingress), the worker's budget reservation
for one provider call, and the batch launcher's hold for a whole batch all ask the same
questions, so they ask them here and cannot drift apart:

- prompt tokens: counted with the encoding of the deployment's upstream model (or the
  logical model's configured `encoding`), exactly as the provider will count them;
- prompt tokens include images, audio, tool calls and definitions and a response schema
  (broker/tokens.py::count_request_prompt_tokens);
- output tokens: the request's `max_tokens` / `max_completion_tokens`, else the
  deployment's `expected_output_tokens` (256 unless configured), once per choice (`n`);
- cost: the price in force in the catalog (`prices`, per deployment before model-wide),
  the one price source (the config file's prices are imported into it, broker/stores/prices.py);
  for a request not yet routed, the dearest deployment that may serve it, so failover can
  never overspend a budget.

Without a config (a process given none) or for a model it does not name, the logical model
name picks the encoding and the catalog alone prices it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from broker.config import DeploymentConfig, SluiceConfig
from broker.stores.prices import PriceBook
from broker.tokens import count_embedding_tokens, count_request_prompt_tokens
from schemas import ChatCompletionRequest, EmbeddingRequest

RequestBody = ChatCompletionRequest | EmbeddingRequest

DEFAULT_EXPECTED_OUTPUT_TOKENS = DeploymentConfig.model_fields["expected_output_tokens"].default


@dataclass(frozen=True, slots=True)
class Estimate:
    """A request's estimated tokens and, when priced, its cost in USD."""

    prompt_tokens: int
    output_tokens: int
    usd: Decimal | None = None

    @property
    def tokens(self) -> int:
        """Prompt plus output tokens."""
        return self.prompt_tokens + self.output_tokens


class Estimator:
    """Estimates requests against one configuration (None: the catalog and defaults only)."""

    def __init__(self, config: SluiceConfig | None) -> None:
        self._config = config

    def for_call(self, body: RequestBody, model: str, deployment: str) -> Estimate:
        """Tokens one call to `deployment` will use at most (no cost: budgets count tokens)."""
        assert self._config is not None, "calls are estimated by workers, which have a config"
        config = self._config.deployments[deployment]
        prompt = _prompt_tokens(body, config.model,
                                          self._config.models[model].encoding)
        return Estimate(prompt, _output(body, _held_output(config)))

    def for_request(self, body: RequestBody, model: str, book: PriceBook,
                    at: datetime) -> Estimate:
        """Tokens on the primary deployment, and the dearest cost over every deployment."""
        if self._config is None or model not in self._config.models:
            prompt = _prompt_tokens(body, model)
            output = _output(body, DEFAULT_EXPECTED_OUTPUT_TOKENS)
            costs = [price.cost(prompt, output) for price in book.in_force(model, at)]
            return Estimate(prompt, output, max(costs) if costs else None)
        chain = self._config.deployment_chain(model)
        primary = chain[0][1]
        prompt = _prompt_tokens(body, primary.model,
                                          self._config.models[model].encoding)
        # An enforced cap anywhere in the chain is held in full (failover cannot overspend);
        # without one, the primary's expectation.
        caps = [d.max_output_tokens for _, d in chain if d.max_output_tokens is not None]
        output = _output(body, max(caps) if caps else primary.expected_output_tokens)
        priced = [price.cost(prompt, output)
                  for price in (book.find(model, name, at) for name, _ in chain)
                  if price is not None]
        return Estimate(prompt, output, max(priced) if priced else None)


def _held_output(deployment: DeploymentConfig) -> int:
    """Output held for a request without a cap of its own: the deployment's enforced
    `max_output_tokens`, else its `expected_output_tokens`."""
    return deployment.max_output_tokens or deployment.expected_output_tokens


def _output(body: RequestBody, expected: int) -> int:
    """Output tokens held: the cap (or the expectation) for each of the `n` choices; an
    embedding generates none."""
    if isinstance(body, EmbeddingRequest):
        return 0
    return (body.output_limit() or expected) * body.choices()


def _prompt_tokens(body: RequestBody, model: str, encoding: str | None = None) -> int:
    if isinstance(body, EmbeddingRequest):
        return count_embedding_tokens(body, model, encoding)
    return count_request_prompt_tokens(body, model, encoding)
