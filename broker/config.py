"""The configuration file: logical models and the provider deployments that serve them.

One YAML file (`--config`, env `SLUICE_CONFIG`). Errors name the bad key, e.g.
`models.gpt-4o.deployments[0]: unknown deployment 'eu-1'`.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.caching.config import CacheConfig
from broker.errors import ConfigError
from broker.guardrails.config import GuardrailPolicy, check_policy_names
from broker.identity.config import IdentityConfig
from broker.routing.policy import RoutingPolicy, check_routing
from schemas import is_valid_topic_component

ProviderKind = Literal["openai", "azure-openai", "anthropic", "gemini", "simulated"]
NATIVE_BATCH_PROVIDERS = ("openai", "anthropic")
DEFAULT_BASE_URLS: dict[str, str] = {
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
"""Where a deployment of these providers calls when it names no `base_url`."""
"""Providers whose own batch API the native batch lane can use."""


class DeploymentConfig(BaseModel):
    """One place a model can be called: a provider account, endpoint and upstream model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: ProviderKind
    """`openai` is any OpenAI-compatible HTTP API (OpenAI, vLLM, Ollama, llama.cpp server);
    `azure-openai` an Azure OpenAI resource (`model` is the Azure deployment name);
    `anthropic` Anthropic's Messages API; `gemini` Google's Gemini API (generateContent);
    `simulated` answers in-process with deterministic text (no network, no cost)."""
    model: Annotated[str, Field(min_length=1)]
    base_url: str | None = None
    """The upstream's root: `https://api.openai.com/v1` (openai),
    `https://<resource>.openai.azure.com` (azure-openai); anthropic and gemini default to
    their public endpoints (`https://api.anthropic.com`,
    `https://generativelanguage.googleapis.com`)."""
    api_key_env: str | None = None
    api_version: str | None = None
    """The API version the adapter speaks: Azure's `api-version` query parameter (default
    `2024-10-21`), Anthropic's `anthropic-version` header (default `2023-06-01`), Gemini's
    path version (default `v1beta`). Unused by `openai` and `simulated`."""
    batch: Literal["queue", "native"] = "queue"
    """How this deployment serves the batch lane: `queue` calls it line by line under its
    rate budget like any request; `native` hands batch lines to the provider's own batch
    API (OpenAI `/v1/batches`, Anthropic Message Batches), billed at its batch price."""
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    # This deployment's price, imported into the price catalog (the one price source, see
    # broker/stores/prices.py) by workers and ingress at start. Leave both out to manage the
    # price with `sluice prices set` alone.
    input_usd_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    output_usd_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    cached_input_usd_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    """Input served from the provider's prompt cache (OpenAI's cached input, Anthropic's
    cache reads); absent, the catalog's rate, else the input price."""
    batch_input_usd_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    batch_output_usd_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    """The provider's batch-API price; absent, half the standard price (OpenAI's and
    Anthropic's batch discount)."""
    cache_write_input_usd_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    """Anthropic's price of input tokens written to its prompt cache; absent, 1.25 times
    the input price (its five-minute cache)."""
    cache_write_1h_input_usd_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    """Likewise for its one-hour cache; absent, twice the input price."""
    latency_ms: Annotated[float, Field(ge=0)] = 0.0
    # Rate budget of the provider account behind this deployment, shared by every worker
    # (and every model using the deployment); see broker/budgets/algorithm.py. None or 0:
    # not limited. Limits are per `window_s` (60 s for OpenAI and Anthropic).
    rpm: Annotated[int, Field(ge=0)] | None = None
    tpm: Annotated[int, Field(ge=0)] | None = None
    input_tpm: Annotated[int, Field(ge=0)] | None = None
    output_tpm: Annotated[int, Field(ge=0)] | None = None
    max_concurrency: Annotated[int, Field(ge=0)] | None = None
    window_s: Annotated[float, Field(gt=0)] = 60.0
    expected_output_tokens: Annotated[int, Field(ge=1)] = 256
    """Output tokens reserved for a request without `max_tokens` (settled afterwards)."""
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    """The most output a request without `max_tokens`/`max_completion_tokens` may get:
    sent to the provider as `max_completion_tokens` and held in full against budgets, so
    no answer can cost more than was reserved for it. Unset: nothing is sent and
    `expected_output_tokens` is held (a long answer can then overspend a budget)."""
    burst: Annotated[float, Field(gt=0, lt=1)] = 0.02
    """Share of each limit that may go at once; the rest is paced over the window."""
    drop_params: list[str] = Field(default_factory=list)
    """Request parameters never sent to this upstream, for one that refuses them (vLLM,
    Ollama): e.g. `[service_tier, store, prediction]`. Dropped silently."""
    allowed_params: list[str] | None = None
    """If set, only these parameters (and `model` and `messages`) are sent upstream."""
    max_context_tokens: Annotated[int, Field(ge=1)] | None = None
    """The upstream model's context window: a request whose counted prompt plus requested
    output does not fit is not sent here but to the next deployment (README "Routing")."""
    # How the bytes travel (HTTP adapters; see workers/providers/http.py).
    proxy: str | None = None
    """Proxy URL for this deployment's calls. None: the worker's `HTTPS_PROXY` /
    `HTTP_PROXY` / `NO_PROXY`; `direct`: no proxy whatever the environment says."""
    ca_bundle: Path | None = None
    """PEM file of the certificate authorities to trust for this upstream (a private CA)
    instead of the public ones."""
    client_cert: Path | None = None
    """PEM certificate (chain) sluicegate presents to an upstream that wants mutual TLS."""
    client_key: Path | None = None
    """Its private key, when not in `client_cert`'s file."""
    verify_tls: bool = True
    """False accepts any certificate: a test upstream only, never a real provider."""
    http2: bool = False
    """Offer HTTP/2 on HTTPS; the upstream picks it or HTTP/1.1 (ALPN). Off by default:
    HTTP/2 goes through httpx's pure-Python stack, HTTP/1.1 through aiohttp's cheaper one."""

    def endpoint(self) -> str | None:
        """The upstream's root URL: `base_url`, else the provider's public endpoint."""
        return self.base_url or DEFAULT_BASE_URLS.get(self.provider)

    @model_validator(mode="after")
    def _http_needs_url(self) -> DeploymentConfig:
        if self.provider in ("openai", "azure-openai") and not self.base_url:
            raise ValueError(f"base_url is required for provider '{self.provider}'")
        if self.batch == "native" and self.provider not in NATIVE_BATCH_PROVIDERS:
            raise ValueError(
                f"batch: 'native' needs a provider with a batch API "
                f"({', '.join(NATIVE_BATCH_PROVIDERS)}), not '{self.provider}'")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        return self



class RetryPolicy(BaseModel):
    """When a request whose every deployment failed (retriably) is tried again, and until when.

    Delays grow exponentially with the provider calls already made, with "equal jitter"
    (half fixed, half random): never zero, so nothing loops hot, and spread, so a burst of
    failures does not come back as a synchronised burst.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: Annotated[int, Field(ge=1)] = 6
    """Provider calls per request, over every delivery, before it ends `failed`."""
    max_total_s: Annotated[float, Field(gt=0)] = 600.0
    """No retry is scheduled later than this after the request was created."""
    initial_backoff_s: Annotated[float, Field(gt=0)] = 1.0
    max_backoff_s: Annotated[float, Field(gt=0)] = 60.0
    multiplier: Annotated[float, Field(ge=1)] = 2.0


class BreakerConfig(BaseModel):
    """When a deployment's circuit breaker opens, and how long it stays open."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    error_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    """Open when this share of calls in `window_s` failed (and at least `min_calls`)."""
    window_s: Annotated[float, Field(gt=0)] = 30.0
    min_calls: Annotated[int, Field(ge=1)] = 20
    cooldown_s: Annotated[float, Field(gt=0)] = 15.0
    """Open this long before one probe call is let through (half-open)."""


class LaneDeadlines(BaseModel):
    """Deadline of a request that did not bring its own (`X-Request-Timeout`), per lane."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interactive_s: Annotated[float, Field(gt=0)] = 600.0
    batch_s: Annotated[float, Field(gt=0)] = 24 * 3600.0


ModelKind = Literal["chat", "embedding"]


class ModelConfig(BaseModel):
    """A logical model clients ask for, served by an ordered list of deployments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployments: Annotated[list[str], Field(min_length=1)]
    kind: ModelKind = "chat"
    """What the model answers: `/v1/chat/completions` or `/v1/embeddings` (a request of
    the other kind is refused with 400 naming `model`)."""
    encoding: str | None = None
    """Token encoding for budgets; guessed from the upstream model name when absent."""
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    """Optional load split: each request's first choice is drawn among the weighted
    deployments by weight (then the others of them, also by weight); unweighted deployments
    are pure fallbacks, tried afterwards in the listed order."""
    retry: RetryPolicy = RetryPolicy()
    cache: CacheConfig | None = None
    """The response cache (README "Caching"): answers replayed to identical requests for
    `ttl_s`, and to similar ones with `semantic`; None (default): off."""
    routing: RoutingPolicy = RoutingPolicy()
    """A/B variants, canary, shadow traffic and the choice strategy (broker/routing)."""
    guardrails: list[str] = Field(default_factory=list)
    """Guardrail policies (top-level `guardrails`) every request to this model passes, in
    order; an API key's own policies come after them (README "Guardrails")."""
    requires_approval: bool = False
    """Callers need an approved access request before using this model (README "Access
    approval"); until then it answers 403 `access_required`/`access_pending`/`access_denied`."""


class SluiceConfig(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: Annotated[dict[str, ModelConfig], Field(min_length=1)]
    deployments: Annotated[dict[str, DeploymentConfig], Field(min_length=1)]
    circuit_breaker: BreakerConfig = BreakerConfig()
    deadlines: LaneDeadlines = LaneDeadlines()
    aliases: dict[str, str] = Field(default_factory=dict)
    """Other names clients may ask for, each served by the model it names (README "Routing")."""
    guardrails: dict[str, GuardrailPolicy] = Field(default_factory=dict)
    """Named guardrail policies: PII, prompt injection, output rules (broker/guardrails)."""
    identity: IdentityConfig = IdentityConfig()
    """Trusted OIDC/JWT issuers and their claims (README "Identity and roles")."""

    @model_validator(mode="after")
    def _references_resolve(self) -> SluiceConfig:
        for name, model in self.models.items():
            if not is_valid_topic_component(name):
                raise ValueError(
                    f"models.{name}: a model name may use only letters, digits, '.', '_' and "
                    "'-' (it names a Kafka topic); put the provider's name in the "
                    "deployment's 'model' instead"
                )
            if name.endswith(".batch"):
                raise ValueError(
                    f"models.{name}: a model name may not end in '.batch': its topic would be "
                    f"the batch lane of model '{name.removesuffix('.batch')}'"
                )
            for index, deployment in enumerate(model.deployments):
                if deployment not in self.deployments:
                    raise ValueError(
                        f"models.{name}.deployments[{index}]: unknown deployment "
                        f"'{deployment}' (known: {', '.join(sorted(self.deployments))})"
                    )
            for weighted in model.weights:
                if weighted not in model.deployments:
                    raise ValueError(
                        f"models.{name}.weights.{weighted}: not one of this model's deployments"
                    )
        check_routing(self)
        check_policy_names(self.guardrails, {n: m.guardrails for n, m in self.models.items()})
        return self

    def deployment_chain(self, model: str) -> list[tuple[str, DeploymentConfig]]:
        """The deployments serving `model`, in failover order."""
        return [(name, self.deployments[name]) for name in self.models[model].deployments]


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{location}: {message}" if location else message)
    return "; ".join(lines)


def parse_config(data: Any, *, source: str = "config") -> SluiceConfig:
    """Validate an already-parsed document; raise `ConfigError` naming the bad key."""
    try:
        return SluiceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc


def load_config(path: Path) -> SluiceConfig:
    """Read and validate a YAML configuration file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(data, source=str(path))
