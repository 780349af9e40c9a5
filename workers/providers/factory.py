"""Build the adapter a deployment's configuration asks for."""

from __future__ import annotations

from typing import assert_never

import httpx

from broker.config import DeploymentConfig
from workers.providers.anthropic import AnthropicProvider
from workers.providers.azure_openai import AzureOpenAIProvider
from workers.providers.base import Provider
from workers.providers.gemini import GeminiProvider
from workers.providers.openai_compatible import OpenAICompatibleProvider
from workers.providers.simulated import SimulatedProvider


def build_provider(
    deployment: str,
    config: DeploymentConfig,
    transport: httpx.AsyncBaseTransport,
    api_key: str | None = None,
) -> Provider:
    """The provider adapter for one deployment.

    Args:
        deployment: The deployment's name in the configuration.
        config: Its configuration; `config.provider` picks the adapter.
        transport: The shared HTTP transport (HTTP adapters only; connection pooling lives
            there).
        api_key: The deployment's secret, read from its `api_key_env` by the caller.
    """
    match config.provider:
        case "openai":
            return OpenAICompatibleProvider(transport, deployment, config, api_key)
        case "azure-openai":
            return AzureOpenAIProvider(transport, deployment, config, api_key)
        case "anthropic":
            return AnthropicProvider(transport, deployment, config, api_key)
        case "gemini":
            return GeminiProvider(transport, deployment, config, api_key)
        case "simulated":
            return SimulatedProvider(deployment, config)
        case _:  # a new provider kind in the config must get an adapter here
            assert_never(config.provider)
