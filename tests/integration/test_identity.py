"""Identity and roles end to end: JWT bearer tokens from a configured issuer (its JWKS
served over real HTTP by a tiny server here), roles enforced on chat, usage and key routes,
and a key's IP allow list checked against the ASGI client address."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.config import SluiceConfig, parse_config
from broker.settings import IngressSettings, KafkaSettings
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack
from tests.jwks_server import serving_jwks

pytestmark = pytest.mark.integration
ON_APACHE = pytest.mark.kafka_engine("apache")  # the stack's tests: one engine is enough

ADMIN_KEY = "sk-admin-identity-tests-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ISSUER = "https://login.example.test/"
AUDIENCE = "sluicegate-tests"
SIGNING_KEY = rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    with serving_jwks(SIGNING_KEY, "k1", "/.well-known/jwks.json") as url:
        yield url


def token(tenant: str, role: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": f"{role}@{tenant}",
                       "org": tenant, "groups": [role], "iat": now, "exp": now + 600},
                      SIGNING_KEY, algorithm="RS256", headers={"kid": "k1"})


def _config(jwks_url: str) -> SluiceConfig:
    return parse_config({
        "models": {"gpt-4o-mini": {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "openai", "base_url": f"{SIM_BASE}/v1",
                                "model": "gpt-4o-mini", "input_usd_per_mtok": "0.15",
                                "output_usd_per_mtok": "0.60"}},
        "identity": {"issuers": [{
            "issuer": ISSUER, "jwks_url": jwks_url, "audience": AUDIENCE,
            "tenant_claim": "org", "role_claim": "groups",
            "roles_map": {"finance": "analyst", "engineers": "member"}}]},
    })


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, database_url: str,
                jwks_url: str) -> AsyncIterator[Stack]:
    ingress = IngressSettings(sync_timeout_s=20, admin_key=ADMIN_KEY)
    async with running_stack(kafka_settings, database_url, config=_config(jwks_url),
                             ingress=ingress) as running:
        yield running


def client_from(stack: Stack, address: str) -> httpx.AsyncClient:
    """A client of the same app whose requests come from `address` (the ASGI peer)."""
    app = cast(httpx.ASGITransport, stack.client._transport).app
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)),
                             base_url="http://ingress")


@ON_APACHE
async def test_the_openai_sdk_with_a_jwt_bills_the_claims_tenant(stack: Stack) -> None:
    client = stack.openai(api_key=token("globex", "engineers"))
    try:
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    finally:
        await client.close()
    assert answer.choices[0].message.content

    async def billed() -> Any:
        return await stack.scalar("SELECT tenant FROM usage_events WHERE tenant = 'globex'")
    assert await eventually(billed) == "globex"


@ON_APACHE
async def test_an_analyst_reads_usage_but_may_not_chat_or_create_keys(stack: Stack) -> None:
    analyst = token("globex", "finance")
    usage = await stack.client.get("/v1/usage", headers={"Authorization": f"Bearer {analyst}"})
    assert usage.status_code == 200, usage.text

    client = stack.openai(api_key=analyst)
    try:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    finally:
        await client.close()
    assert refused.value.code == "insufficient_role"
    assert "'member'" in refused.value.message

    created = await stack.client.post("/v1/admin/keys", json={"tenant": "globex"},
                                      headers={"Authorization": f"Bearer {analyst}"})
    assert created.status_code == 403
    assert created.json()["error"]["code"] == "insufficient_role"
    assert "tenant_admin" in created.json()["error"]["message"]


@ON_APACHE
async def test_a_key_with_an_ip_allow_list_is_refused_elsewhere(stack: Stack) -> None:
    created = await stack.client.post("/v1/admin/keys", headers=ADMIN, json={
        "tenant": "acme", "ip_allow": ["192.0.2.10"], "role": "analyst"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["role"], body["ip_allow"]) == ("analyst", ["192.0.2.10/32"])
    key = {"Authorization": f"Bearer {body['secret']}"}
    async with client_from(stack, "198.51.100.7") as outside:
        refused = await outside.get("/v1/usage", headers=key)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "ip_not_allowed"
    async with client_from(stack, "192.0.2.10") as inside:
        assert (await inside.get("/v1/usage", headers=key)).status_code == 200
        chat = await inside.post("/v1/chat/completions", headers=key, json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 403  # the key's role, analyst, may not call models
    assert chat.json()["error"]["code"] == "insufficient_role"


@ON_APACHE
async def test_a_tenant_admin_manages_only_its_tenants_keys(stack: Stack) -> None:
    created = await stack.client.post("/v1/admin/keys", headers=ADMIN, json={
        "tenant": "acme", "role": "tenant_admin"})
    assert created.status_code == 201, created.text
    tenant_admin = {"Authorization": f"Bearer {created.json()['secret']}"}
    own = await stack.client.post("/v1/admin/keys", headers=tenant_admin,
                                  json={"tenant": "acme", "role": "member"})
    assert own.status_code == 201, own.text
    other = await stack.client.post("/v1/admin/keys", headers=tenant_admin,
                                    json={"tenant": "globex"})
    assert other.status_code == 404
    admin = await stack.client.post("/v1/admin/keys", headers=tenant_admin,
                                    json={"tenant": "acme", "role": "admin"})
    assert admin.json()["error"]["code"] == "insufficient_role"
    listed = await stack.client.get("/v1/admin/keys?tenant=globex", headers=tenant_admin)
    assert {key["tenant"] for key in listed.json()["data"]} == {"acme"}
    tenants = await stack.client.get("/v1/admin/tenants", headers=tenant_admin)
    assert tenants.status_code == 403  # tenants are the admin's


@ON_APACHE
async def test_a_tenants_ip_lists_bind_its_tokens_and_keys(stack: Stack) -> None:
    changed = await stack.client.put("/v1/admin/tenants/initech", headers=ADMIN,
                                     json={"ip_allow": ["192.0.2.0/24"],
                                           "ip_deny": ["192.0.2.66"]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["ip_deny"] == ["192.0.2.66/32"]
    member = {"Authorization": f"Bearer {token('initech', 'engineers')}"}
    created = await stack.client.post("/v1/admin/keys", headers=ADMIN, json={
        "tenant": "initech", "ip_allow": ["198.51.100.0/24"]})  # outside the tenant's list
    key = {"Authorization": f"Bearer {created.json()['secret']}"}
    for address, caller, allowed in [("192.0.2.10", member, True),
                                     ("192.0.2.66", member, False),
                                     ("203.0.113.1", member, False),
                                     ("198.51.100.1", key, False),  # the tenant's refuses
                                     ("192.0.2.10", key, False)]:  # the key's refuses
        async with client_from(stack, address) as client:
            response = await client.get("/v1/models", headers=caller)
        assert (response.status_code == 200) is allowed, (address, response.text)
        if not allowed:
            assert response.json()["error"]["code"] == "ip_not_allowed"


def test_cli_creates_keys_with_a_role_and_ip_lists(
        database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from sluice.cli import main

    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    assert main(["keys", "create", "--tenant", "acme", "--role", "analyst",
                 "--ip-allow", "10.0.0.0/8,192.0.2.1", "--ip-deny", "10.9.0.0/16"]) == 0
    assert "role analyst" in capsys.readouterr().out
    assert main(["keys", "create", "--tenant", "acme", "--ip-allow", "10.0.0.300/8"]) != 0
    assert _rows(database_url) == [("analyst", ["10.0.0.0/8", "192.0.2.1/32"],
                                    ["10.9.0.0/16"])]  # the refused one was never created


def _rows(database_url: str) -> list[tuple[Any, ...]]:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def read() -> list[tuple[Any, ...]]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(
                    "SELECT role, ip_allow, ip_deny FROM api_keys WHERE tenant = 'acme'"))
                return [tuple(row) for row in result]
        finally:
            await engine.dispose()
    return asyncio.run(read())
