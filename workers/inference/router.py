"""A request's route: its variant, then its deployments in the order they are tried.

1. A shadow copy (`shadow_of`, under the shadow account) goes to the shadow deployment only.
2. The caller's variant (A/B arm, `canary` or `stable`): the one ingress stamped on the
   request, or assigned here for requests produced straight to Kafka; both use the same
   sticky hash (`broker.routing.sticky`), so they agree.
3. The model's strategy orders its deployments: `ordered` (configured order, `weights`
   drawing the first choice), `least_busy` (fewest calls in flight on this worker),
   `lowest_latency` (smallest latency EWMA; an unmeasured deployment counts as fastest, so
   each is tried and measured), `cheapest` (least estimated cost at its configured price;
   unpriced ones last). Ties keep the configured order.
4. The variant's deployment goes first; the others stay as fallbacks.
5. The context-window rule drops every deployment whose `max_context_tokens` the request
   does not fit; when none is left, the request is refused (400 `context_length_exceeded`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from broker.config import ModelConfig, SluiceConfig
from broker.estimates import Estimator
from broker.routing import (
    CANARY,
    SHADOW,
    STABLE,
    RoutingPolicy,
    assign_variant,
    variant_deployment,
)
from schemas import ChatCompletionRequest, ErrorInfo, InferenceRequest
from workers.inference.deployment_stats import DeploymentStats
from workers.inference.routing import route

_MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """Deployments to try in order, the variant to record, or why none may be tried."""

    order: list[str]
    variant: str | None
    refusal: ErrorInfo | None = None


class Router:
    """Chooses routes for one worker's requests (see the module)."""

    def __init__(self, config: SluiceConfig, stats: DeploymentStats, rng: random.Random,
                 estimator: Estimator | None = None) -> None:
        self._config = config
        self.stats = stats
        self._rng = rng
        self._estimator = estimator or Estimator(config)

    def choose(self, request: InferenceRequest) -> RouteChoice:
        """The route of `request` (of a model in the configuration)."""
        model = self._config.models[request.model]
        policy = model.routing
        shadow = policy.shadow
        if request.shadow_of is not None and shadow is not None \
                and request.tenant == shadow.account:
            return self._fitting(request, [shadow.deployment], SHADOW)
        variant = self._variant(request, policy)
        order = self._ordered(request, model)
        first = variant_deployment(policy, variant)
        if first is not None:
            order = [first, *(name for name in order if name != first)]
        return self._fitting(request, order, variant)

    def _variant(self, request: InferenceRequest, policy: RoutingPolicy) -> str | None:
        """The stamped variant while the policy still has it, else a fresh assignment."""
        stamped = request.variant
        arm = policy.variants.get(stamped) if stamped is not None else None
        still_valid = (
            (arm is not None and arm.weight > 0)
            or (stamped == CANARY and policy.canary is not None and policy.canary.percent > 0)
            or (stamped == STABLE and policy.canary is not None and not policy.variants)
            or (stamped == SHADOW and request.shadow_of is not None))
        # A canary rolled back to 0 % (or an arm weighted 0) takes no more calls at once,
        # not only once the requests ingress stamped before have drained.
        return stamped if still_valid else assign_variant(request.model, policy, request)

    def _ordered(self, request: InferenceRequest, model: ModelConfig) -> list[str]:
        strategy = model.routing.strategy
        names = list(model.deployments)
        if strategy == "least_busy":
            return sorted(names, key=lambda name: self.stats.in_flight[name])
        if strategy == "lowest_latency":
            return sorted(names, key=lambda name: self.stats.latency_ms(name) or 0.0)
        if strategy == "cheapest":
            return self._cheapest(request, names)
        return route(model, self._rng)

    def _cheapest(self, request: InferenceRequest, names: list[str]) -> list[str]:
        """By estimated cost; the tokens are counted once (with the first deployment's
        encoding): encodings differ by a few percent, prices by multiples."""
        estimate = self._estimator.for_call(request.body, request.model, names[0])

        def cost(name: str) -> float:
            deployment = self._config.deployments[name]
            prices = (deployment.input_usd_per_mtok, deployment.output_usd_per_mtok)
            if prices[0] is None and prices[1] is None:
                return math.inf
            return (estimate.prompt_tokens * float(prices[0] or 0)
                    + estimate.output_tokens * float(prices[1] or 0)) / _MTOK

        return sorted(names, key=cost)

    def _fitting(self, request: InferenceRequest, order: list[str],
                 variant: str | None) -> RouteChoice:
        """`order` without the deployments whose context window the request overflows."""
        needs = {name: self._context_needed(request, name) for name in order
                 if self._config.deployments[name].max_context_tokens is not None}
        fits = [name for name in order
                if name not in needs or needs[name] <= self._window(name)]
        if fits or not order:
            return RouteChoice(fits, variant)
        largest = max(order, key=self._window)
        param = "messages" if isinstance(request.body, ChatCompletionRequest) else "input"
        error = ErrorInfo(
            type="invalid_request_error", code="context_length_exceeded", param=param,
            message=f"This request needs {needs[largest]} tokens (prompt plus requested "
                    f"output), more than the largest context window of model "
                    f"'{request.requested_model or request.model}' ({self._window(largest)} "
                    "tokens). Shorten the messages or lower max_tokens.")
        return RouteChoice([], variant, refusal=error)

    def _window(self, name: str) -> int:
        return self._config.deployments[name].max_context_tokens or 0

    def _context_needed(self, request: InferenceRequest, name: str) -> int:
        """The counted prompt (this deployment's encoding) plus the output asked for: the
        request's cap, else the cap the deployment enforces, else none."""
        prompt = self._estimator.for_call(request.body, request.model, name).prompt_tokens
        body = request.body
        if not isinstance(body, ChatCompletionRequest):
            return prompt
        output = body.output_limit() or self._config.deployments[name].max_output_tokens or 0
        return prompt + output * body.choices()
