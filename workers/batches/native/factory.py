"""The batch API client of each `batch: native` deployment."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import httpx

from broker.config import DeploymentConfig, SluiceConfig
from schemas.anthropic import DEFAULT_API_VERSION
from workers.batches.native.anthropic_batches import AnthropicBatches
from workers.batches.native.http import UpstreamHTTP
from workers.batches.native.openai_batches import OpenAIBatches
from workers.batches.native.upstream import UPSTREAM_TIMEOUT_S, BatchUpstream

ANTHROPIC_BASE_URL = "https://api.anthropic.com"


def native_upstreams(
    config: SluiceConfig | None,
    transport_for: Callable[[str, DeploymentConfig], httpx.AsyncBaseTransport],
    api_keys: Mapping[str, str],
) -> dict[str, BatchUpstream]:
    """A client for every deployment with `batch: native`, by deployment name.

    Args:
        config: the models and deployments (None: no native lane).
        transport_for: the pooled transport of a deployment
            (`ProviderTransports.for_deployment`).
        api_keys: each deployment's secret, read from its `api_key_env` at the edge.
    """
    upstreams: dict[str, BatchUpstream] = {}
    for name, deployment in (config.deployments.items() if config else ()):
        if deployment.batch != "native":
            continue
        key = api_keys.get(name)
        transport = transport_for(name, deployment)
        if deployment.provider == "openai":
            assert deployment.base_url is not None  # the config requires it for openai
            headers = [("authorization", f"Bearer {key}")] if key else []
            upstreams[name] = OpenAIBatches(UpstreamHTTP(
                transport, name, deployment.base_url, headers, UPSTREAM_TIMEOUT_S), deployment)
        elif deployment.provider == "anthropic":
            headers = [("anthropic-version", deployment.api_version or DEFAULT_API_VERSION)]
            if key:
                headers.append(("x-api-key", key))
            upstreams[name] = AnthropicBatches(UpstreamHTTP(
                transport, name, deployment.base_url or ANTHROPIC_BASE_URL, headers,
                UPSTREAM_TIMEOUT_S), deployment)
    return upstreams
