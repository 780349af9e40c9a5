"""Adapter for Azure OpenAI: OpenAI's bodies behind Azure's URLs and key header.

Azure names the model in the URL (`model` in the configuration is the Azure deployment
name), takes the API version as a query parameter and the key in an `api-key` header.
Everything else is OpenAI's wire format, so the OpenAI-compatible adapter does the work:
the shared error translation (`workers.providers.calls`) already reads Azure's envelope
(`{"error": {"code", "message"}}`), its `x-ratelimit-*` prefix covers Azure's
`x-ratelimit-remaining-requests|tokens`, and its retry wait prefers `retry-after-ms`, which
Azure sends on 429 beside `retry-after`.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from broker.config import DeploymentConfig
from workers.providers.openai_compatible import OpenAICompatibleProvider

DEFAULT_API_VERSION = "2024-10-21"
"""The latest generally available data-plane version when this adapter was written."""


class AzureOpenAIProvider(OpenAICompatibleProvider):
    """Calls `POST {base_url}/openai/deployments/{model}/chat/completions?api-version=…`.

    Args:
        transport: The shared HTTP transport.
        deployment: The deployment's name in sluicegate's configuration.
        config: Its configuration; `base_url` is the resource's endpoint
            (`https://<resource>.openai.azure.com`, with or without `/openai`), `model`
            the Azure deployment name, `api_version` the `api-version` sent.
        api_key: The resource's key, sent as `api-key` (read from `api_key_env` at the edge).
    """

    name = "azure-openai"

    def _endpoint_url(self, config: DeploymentConfig, operation: str) -> httpx.URL:
        """`{resource}/openai/deployments/{model}{operation}?api-version=…`."""
        root = (config.base_url or "").rstrip("/").removesuffix("/openai")
        path = f"{root}/openai/deployments/{quote(config.model, safe='')}{operation}"
        return httpx.URL(path, params={"api-version": config.api_version or DEFAULT_API_VERSION})

    def _credentials(self, api_key: str) -> tuple[bytes, bytes]:
        """Azure's `api-key` header (a bearer token would be read as an Entra ID token)."""
        return (b"api-key", api_key.encode())
