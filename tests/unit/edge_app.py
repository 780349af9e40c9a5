"""An ingress app over in-memory Kafka and an unreachable database, for tests of who may
call what at the HTTP edge: every refusal happens before a query, so a test that reached
one fails instead of passing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import create_async_engine

from broker.batches.settings import BatchSettings
from broker.config import SluiceConfig
from broker.identity.config import ROLES
from broker.settings import IngressSettings, KafkaSettings
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.identity import RolePrincipal
from ingress.services import (
    ApiKeyFinder,
    IngressServices,
    LedgerAccess,
    Principal,
    StoredRequest,
)


class _NoRequests:
    async def find(self, request_id: str) -> StoredRequest | None:
        return None


class RoleKeys:
    """`sk-<role>` is a key of tenant acme with that role; `others` adds keys by secret."""

    def __init__(self, others: dict[str, Principal] | None = None):
        self._others = others or {}

    async def principal(self, secret: str, *, cached_only: bool = False) -> Principal | None:
        if secret in self._others:
            return self._others[secret]
        role = secret.removeprefix("sk-")
        if role not in ROLES:
            return None
        return RolePrincipal(tenant="acme", api_key_id=f"key_{role}", role=role)


@asynccontextmanager
async def edge_client(config: SluiceConfig, keys: ApiKeyFinder, *, admin_key: str,
                      kafka: str, prefix: str, max_body_bytes: int | None = None,
                      ) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app; `kafka` names its in-memory broker (`memory://<kafka>`)."""
    engine = create_async_engine("postgresql+asyncpg://sluice@127.0.0.1:9/none")
    limits = {} if max_body_bytes is None else {"max_body_bytes": max_body_bytes}
    app = create_app(IngressServices(
        settings=IngressSettings(admin_key=SecretStr(admin_key), **limits),
        kafka=KafkaSettings(kafka_bootstrap=f"memory://{kafka}", topic_prefix=prefix),
        config=config, api_keys=keys, requests=_NoRequests(), webhooks=WebhookSettings(),
        batches=BatchSettings(), ledger=LedgerAccess(engine)))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://ingress") as client:
            yield client
    finally:
        await engine.dispose()


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header carrying `secret`."""
    return {"Authorization": f"Bearer {secret}"}
