"""Provider adapters: one file per vendor, all behind the `Provider` protocol."""

from workers.providers.anthropic import AnthropicProvider
from workers.providers.azure_openai import AzureOpenAIProvider
from workers.providers.base import Provider, ProviderResponse
from workers.providers.factory import build_provider
from workers.providers.gemini import GeminiProvider
from workers.providers.http import ProviderTransports, ProxyEnvironment
from workers.providers.openai_compatible import OpenAICompatibleProvider
from workers.providers.simulated import SimulatedProvider

__all__ = [
    "AnthropicProvider",
    "AzureOpenAIProvider",
    "GeminiProvider",
    "OpenAICompatibleProvider",
    "Provider",
    "ProviderResponse",
    "ProviderTransports",
    "ProxyEnvironment",
    "SimulatedProvider",
    "build_provider",
]
