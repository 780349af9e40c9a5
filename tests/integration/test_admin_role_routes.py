"""The `admin` role on every admin route, end to end: an API key with role `admin` and an
OIDC token whose claims map to `admin` manage templates, decide access requests and see
the console's operator views (and replay dead letters) like the admin key; `member` and
`tenant_admin` callers get 403 `insufficient_role` there, and keep their tenant's views."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.config import SluiceConfig, parse_config
from broker.kafka import DLQ_AT, DLQ_REASON, DLQ_TOPIC, encode, new_producer, topics_for
from broker.settings import IngressSettings, KafkaSettings
from broker.signing import service_headers
from schemas import ChatCompletionRequest, InferenceRequest
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack
from tests.jwks_server import serving_jwks

pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

ADMIN_KEY = "sk-admin-role-routes-tests-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ISSUER = "https://sso.example.test/"
AUDIENCE = "sluicegate-admin-role-tests"
SIGNING_KEY = rsa.generate_private_key(65537, 2048)
MODEL = "gpt-4o-mini"
# Routes only an admin may call: (method, path, body).
ADMIN_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/admin/templates", None),
    ("POST", "/v1/admin/templates", {"name": "x", "messages": [{"role": "user",
                                                                "content": "hi"}],
                                     "parameters": {"model": MODEL}}),
    ("GET", "/v1/admin/access?pending=true", None),
    ("POST", "/v1/admin/access/acc_missing/approve", None),
    ("GET", "/console/api/queues", None),
    ("GET", "/console/api/budgets", None),
    ("GET", "/console/api/workers", None),
    ("GET", "/console/api/dead-letters", None),
    ("POST", "/console/api/dead-letters/replay", {"ids": ["0:0"]}),
]


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    """The issuer's JWKS document, served over real HTTP on loopback."""
    with serving_jwks(SIGNING_KEY, "ops", "/jwks.json") as url:
        yield url


def _token(tenant: str, group: str) -> dict[str, str]:
    now = int(time.time())
    signed = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": f"{group}@{tenant}",
                         "org": tenant, "groups": [group], "iat": now, "exp": now + 600},
                        SIGNING_KEY, algorithm="RS256", headers={"kid": "ops"})
    return {"Authorization": f"Bearer {signed}"}


def _config(jwks_url: str) -> SluiceConfig:
    return parse_config({
        "models": {MODEL: {"deployments": ["sim"]}},
        "deployments": {"sim": {"provider": "openai", "base_url": f"{SIM_BASE}/v1",
                                "model": MODEL, "input_usd_per_mtok": "0.15",
                                "output_usd_per_mtok": "0.60"}},
        "identity": {"issuers": [{
            "issuer": ISSUER, "jwks_url": jwks_url, "audience": AUDIENCE,
            "tenant_claim": "org", "role_claim": "groups",
            "roles_map": {"platform-ops": "admin", "team-leads": "tenant_admin"}}]},
    })


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, database_url: str,
                jwks_url: str) -> AsyncIterator[Stack]:
    ingress = IngressSettings(sync_timeout_s=20, admin_key=ADMIN_KEY)
    async with running_stack(kafka_settings, database_url, config=_config(jwks_url),
                             ingress=ingress) as running:
        yield running


async def _key(stack: Stack, tenant: str, role: str) -> tuple[dict[str, str], str]:
    """Bearer headers and the id of a new key of `role`, made with the admin key."""
    created = await stack.client.post("/v1/admin/keys", headers=ADMIN,
                                      json={"tenant": tenant, "role": role})
    assert created.status_code == 201, created.text
    body = created.json()
    return {"Authorization": f"Bearer {body['secret']}"}, body["id"]


async def _dead_letter(kafka: KafkaSettings) -> tuple[str, str]:
    """A valid request of acme's parked in the dead-letter topic: its `partition:offset`
    and the request's id."""
    request = InferenceRequest(
        id=f"req_{uuid.uuid4().hex}", model=MODEL, tenant="acme",
        created_at=datetime.now(UTC),
        body=ChatCompletionRequest.model_validate(
            {"model": MODEL, "messages": [{"role": "user", "content": "parked"}]}))
    payload = encode(request)
    topics = topics_for(kafka)
    producer = new_producer(kafka, client_id="test-admin-role-dead-letter")
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            topics.dead_letter, payload, key=request.id.encode(), headers=[
                *service_headers(kafka, payload), (DLQ_REASON, b"parked by a test"),
                (DLQ_TOPIC, topics.requests(MODEL).encode()),
                (DLQ_AT, datetime.now(UTC).isoformat().encode())])
    finally:
        await producer.stop()
    return f"{sent.partition}:{sent.offset}", request.id


async def _admin_can_do_everything(stack: Stack, caller: dict[str, str], actor: str,
                                   template: str) -> None:
    created = await stack.client.post("/v1/admin/templates", headers=caller, json={
        "name": template, "messages": [{"role": "user", "content": "Hi {{ who }}"}],
        "parameters": {"model": MODEL}, "requires_approval": True,
        "variables": [{"name": "who", "type": "string", "required": True}]})
    assert created.status_code == 201, created.text
    listed = await stack.client.get("/v1/admin/templates", headers=caller)
    assert template in [item["name"] for item in listed.json()["data"]]
    shown = await stack.client.get(f"/v1/admin/templates/{template}", headers=caller)
    assert shown.json()["requires_approval"] is True

    # A member asks; this admin sees it pending and approves it, named in the audit.
    asked = await stack.client.post("/v1/access/requests", headers=stack.auth, json={
        "resource": f"template:{template}", "reason": "please"})
    assert asked.status_code == 200, asked.text
    pending = await stack.client.get("/v1/admin/access?pending=true", headers=caller)
    assert asked.json()["id"] in [item["id"] for item in pending.json()["data"]]
    approved = await stack.client.post(f"/v1/admin/access/{asked.json()['id']}/approve",
                                       headers=caller, json={"reason": "ok"})
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["decided_by"]) == ("approved", actor)
    called = await stack.client.post(f"/v1/templates/{template}/completions",
                                     headers=stack.auth, json={"variables": {"who": "Ada"}})
    assert called.status_code == 200, called.text

    me = (await stack.client.get("/console/api/me", headers=caller)).json()
    assert (me["admin"], me["tenant"]) == (True, None)
    for view in ("queues", "budgets", "workers", "dead-letters"):
        response = await stack.client.get(f"/console/api/{view}", headers=caller)
        assert response.status_code == 200, (view, response.text)
    queues = (await stack.client.get("/console/api/queues", headers=caller)).json()
    assert MODEL in {row["model"] for row in queues["data"]}

    parked, request_id = await _dead_letter(stack.kafka)
    letters = (await stack.client.get("/console/api/dead-letters", headers=caller)).json()
    assert parked in [letter["id"] for letter in letters["data"]]
    replayed = await stack.client.post("/console/api/dead-letters/replay", headers=caller,
                                       json={"ids": [parked]})
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["replayed"] == 1

    async def answered() -> Any:  # the replayed request reached a worker and the ledger
        status = await stack.scalar("SELECT status FROM requests WHERE id = :id", id=request_id)
        return None if status in (None, "queued") else status  # wait for a final status

    assert await eventually(answered) == "succeeded"


async def test_an_admin_role_key_and_token_administer_everything(stack: Stack) -> None:
    admin_key, admin_key_id = await _key(stack, "ops", "admin")
    await _admin_can_do_everything(stack, admin_key, admin_key_id, "by-key")
    # A token caller is recorded by issuer and subject (`ingress.identity`).
    issuer_tag = hashlib.sha256(ISSUER.encode()).hexdigest()[:8]
    await _admin_can_do_everything(stack, _token("ops", "platform-ops"),
                                   f"jwt:{issuer_tag}:platform-ops@ops", "by-token")


async def test_other_roles_get_insufficient_role_on_admin_routes(stack: Stack) -> None:
    tenant_admin, _ = await _key(stack, "acme", "tenant_admin")
    callers = {"member key": stack.auth, "tenant_admin key": tenant_admin,
               "tenant_admin token": _token("acme", "team-leads")}
    for who, caller in callers.items():
        for method, path, body in ADMIN_ROUTES:
            response = await stack.client.request(method, path, headers=caller, json=body)
            assert response.status_code == 403, (who, path, response.text)
            assert response.json()["error"]["code"] == "insufficient_role", (who, path)
        # Their own tenant's console views stay open to them.
        me = await stack.client.get("/console/api/me", headers=caller)
        assert (me.json()["admin"], me.json()["tenant"]) == (False, "acme"), who
        throughput = await stack.client.get("/console/api/throughput", headers=caller)
        assert throughput.status_code == 200, (who, throughput.text)
    for method, path, body in ADMIN_ROUTES:  # no credentials at all: 401
        anonymous = await stack.client.request(method, path, json=body)
        assert anonymous.status_code == 401, (path, anonymous.text)
    assert await stack.scalar("SELECT count(*) FROM prompt_templates") == 0  # none made
