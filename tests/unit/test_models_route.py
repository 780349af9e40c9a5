"""`GET /v1/models` lists what the calling key may use, and nothing else."""

from __future__ import annotations

import httpx

from broker.batches.settings import BatchSettings
from broker.config import parse_config
from broker.settings import IngressSettings, KafkaSettings
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.services import IngressServices, Principal, StoredRequest

CONFIG = parse_config({
    "models": {"open": {"deployments": ["sim"]}, "secret": {"deployments": ["sim"]}},
    "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}},
})
KEYS = {
    "sk-all": Principal(tenant="acme", api_key_id="key_all"),
    "sk-open": Principal(tenant="acme", api_key_id="key_open", models=frozenset({"open"})),
}


class _Keys:
    async def principal(self, secret: str, *, cached_only: bool = False) -> Principal | None:
        return KEYS.get(secret)


class _NoLedger:
    async def find(self, request_id: str) -> StoredRequest | None:
        return None


async def test_a_key_limited_to_some_models_lists_only_those() -> None:
    app = create_app(IngressServices(
        settings=IngressSettings(), kafka=KafkaSettings(kafka_bootstrap="memory://models"),
        config=CONFIG, api_keys=_Keys(), requests=_NoLedger(), webhooks=WebhookSettings(),
        batches=BatchSettings()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ingress") as client:
        listed = {}
        for key in KEYS:
            response = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
            listed[key] = [model["id"] for model in response.json()["data"]]
        unknown = await client.get("/v1/models", headers={"Authorization": "Bearer sk-nope"})
    assert listed == {"sk-all": ["open", "secret"], "sk-open": ["open"]}
    assert unknown.status_code == 401
