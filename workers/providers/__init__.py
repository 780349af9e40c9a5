"""Provider adapters: one file per vendor, all behind the `Provider` protocol."""

from workers.providers.base import Provider, ProviderResponse
from workers.providers.factory import build_provider
from workers.providers.keepalive import KeepAliveTransport
from workers.providers.openai_compatible import OpenAICompatibleProvider
from workers.providers.simulated import SimulatedProvider

__all__ = [
    "KeepAliveTransport",
    "OpenAICompatibleProvider",
    "Provider",
    "ProviderResponse",
    "SimulatedProvider",
    "build_provider",
]
