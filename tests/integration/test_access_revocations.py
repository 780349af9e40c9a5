"""Revoking access and limiting tenant admins, end to end over PostgreSQL and Kafka.

- A batch made while its gated model was approved, launched after a denial: that model's
  lines are answered `access_denied` in the error file, the others run.
- A denial of one key's own grant revokes it under a tenant-wide approval, and asking again
  leaves it waiting for an admin; a key that has access may not ask (no self-lockout).
- A tenant admin acting through a key with limits creates and changes keys only within
  them, and may not change its own key's; the admin is not limited. Members do not list
  the tenant's keys in the console; a tenant admin does.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from sqlalchemy import text

from broker.batches.files import FileStore
from broker.batches.settings import BatchSettings
from broker.estimates import Estimator
from broker.kafka import new_producer
from broker.settings import KafkaSettings
from broker.stores.access import AccessStore
from broker.stores.keys import create_api_key
from tests.integration.stack import Stack
from tests.integration.test_access_approval import ADMIN, MODEL, _config
from tests.integration.test_access_approval import stack as access_stack
from workers.batches.claims import claim
from workers.batches.launcher import Launcher

pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

# The access tests' stack (`access_stack`): MODEL requires approval, "open-model" not.
GATED = MODEL
OPEN = "open-model"
stack = access_stack


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def _decide(stack: Stack, grant_id: str, action: str) -> None:
    decided = await stack.client.post(f"/v1/admin/access/{grant_id}/{action}", headers=ADMIN)
    assert decided.status_code == 200, decided.text


async def _code(client: openai.AsyncOpenAI) -> str | None:
    """None when the gated model answers; the refusal's code otherwise."""
    try:
        await client.chat.completions.create(
            model=GATED, messages=[{"role": "user", "content": "hello"}])
    except openai.PermissionDeniedError as refused:
        return refused.code
    return None


async def test_a_denial_stops_the_lines_of_a_batch_made_before_it(
    stack: Stack, kafka_settings: KafkaSettings
) -> None:
    asked = await stack.client.post("/v1/access/requests", headers=stack.auth, json={
        "resource": f"model:{GATED}", "reason": "nightly batch"})
    await _decide(stack, asked.json()["id"], "approve")
    lines = [{"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "messages": [{"role": "user", "content": "x"}]}}
             for custom_id, model in (("gated", GATED), ("open", OPEN))]
    async with stack.openai() as sdk:
        file = await sdk.files.create(file=("in.jsonl", "\n".join(
            json.dumps(line) for line in lines).encode()), purpose="batch")
        created = await sdk.batches.create(input_file_id=file.id, completion_window="24h",
                                           endpoint="/v1/chat/completions")
    # Created while approved: the batch may send lines to the gated model.
    assert sorted(await stack.scalar("SELECT models FROM batches WHERE id = :id",
                                     id=created.id)) == [GATED, OPEN]
    await _decide(stack, asked.json()["id"], "deny")

    # No tracker runs here: the test launches the batch itself, after the denial.
    producer = new_producer(kafka_settings, client_id="test-revocation")
    await producer.start()
    try:
        batch = await claim(stack.engine, created.id)
        assert batch is not None
        await Launcher(stack.engine, FileStore(stack.engine, BatchSettings()), producer,
                       kafka_settings, Estimator(_config()), config=_config()).launch(batch)
    finally:
        await producer.stop()
    async with stack.engine.connect() as connection:
        rows = {row.custom_id: row for row in (await connection.execute(text(
            "SELECT custom_id, status, status_code, body FROM batch_requests "
            "WHERE batch_id = :id"), {"id": created.id})).all()}
    assert (rows["gated"].status, rows["gated"].status_code) == ("failed", 400)
    error = rows["gated"].body["error"]
    assert error["code"] == "access_denied" and f"model:{GATED}" in error["message"]
    assert rows["open"].status != "failed" and rows["open"].status_code != 400
    assert await stack.scalar("SELECT status FROM batches WHERE id = :id",
                              id=created.id) in ("in_progress", "finalizing", "completed")


async def test_a_keys_own_grant_decides_over_the_tenants(
    stack: Stack
) -> None:
    other_secret, other = await create_api_key(stack.engine, "acme")
    tenant_wide = await stack.client.post("/v1/admin/access", headers=ADMIN, json={
        "resource": f"model:{GATED}", "tenant": "acme", "reason": "pilot"})
    await _decide(stack, tenant_wide.json()["id"], "approve")
    async with stack.openai() as mine, stack.openai(other_secret) as theirs:
        assert await _code(mine) is None and await _code(theirs) is None

        # One key denied on its own: revoked for it alone, under the tenant's approval.
        own = await stack.client.post("/v1/admin/access", headers=ADMIN, json={
            "resource": f"model:{GATED}", "tenant": "acme", "key_id": other.id,
            "reason": "contractor key"})
        assert own.json()["status"] == "pending"
        await _decide(stack, own.json()["id"], "deny")
        assert await _code(theirs) == "access_denied"
        assert await _code(mine) is None

        # The denied key asks again: it waits for an admin, the tenant's approval does not
        # let it back in.
        again = await stack.client.post("/v1/access/requests", headers=_bearer(other_secret),
                                        json={"resource": f"model:{GATED}", "reason": "pls"})
        assert again.json()["status"] == "pending"
        assert await _code(theirs) == "access_pending"
        # A key that has access (through its tenant) may not ask: that would lock it out.
        asked = await stack.client.post("/v1/access/requests", headers=stack.auth,
                                        json={"resource": f"model:{GATED}", "reason": "x"})
        assert asked.status_code == 400 and \
            asked.json()["error"]["code"] == "access_already_granted"
        assert await _code(mine) is None

        # The tenant-wide grant denied, one key approved on its own: that key alone calls.
        await _decide(stack, tenant_wide.json()["id"], "deny")
        await _decide(stack, own.json()["id"], "approve")
        assert await _code(theirs) is None
        assert await _code(mine) == "access_denied"
    assert await AccessStore(stack.engine).statuses("acme", other.id, f"model:{GATED}") == [
        "approved"]


async def _create_key(stack: Stack, headers: dict[str, str], **body: Any) -> Any:
    return await stack.client.post("/v1/admin/keys", headers=headers,
                                   json={"tenant": "acme", **body})


async def test_a_tenant_admin_hands_out_keys_within_its_own_limits(stack: Stack) -> None:
    # The test client calls from 127.0.0.1: the tenant admin's own lists admit it.
    limits: dict[str, Any] = {"models": [OPEN], "rpm": 100, "tpm": 10_000,
                              "ip_allow": ["127.0.0.0/8"], "ip_deny": ["127.0.0.5/32"]}
    made = await _create_key(stack, ADMIN, role="tenant_admin", **limits)
    assert made.status_code == 201, made.text
    lead, lead_id = _bearer(made.json()["secret"]), made.json()["id"]

    escapes = [({}, "models"), (limits | {"models": [OPEN, GATED]}, f"models {GATED}"),
               (limits | {"rpm": 101}, "rpm 101"), (limits | {"tpm": None}, "tpm"),
               (limits | {"ip_allow": None}, "ip_allow"),
               (limits | {"ip_allow": ["10.0.0.0/8"]}, "ip_allow"),
               (limits | {"ip_deny": []}, "ip_deny")]
    for body, named in escapes:
        refused = await _create_key(stack, lead, **body)
        assert refused.status_code == 403, (body, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "exceeds_own_limits" and named in error["message"], body
    within = await _create_key(stack, lead, **limits | {
        "rpm": 10, "ip_allow": ["127.0.0.1/32"], "ip_deny": ["127.0.0.5/32", "127.0.0.6/32"]})
    assert within.status_code == 201, within.text
    member_id = within.json()["id"]

    # Changes: the tenant admin's own key not at all; another key's lists within its own.
    for change in ({"ip_allow": None}, {"ip_deny": ["127.0.0.5/32"]}, {"role": "member"}):
        own = await stack.client.patch(f"/v1/admin/keys/{lead_id}", headers=lead,
                                       json=change)
        assert own.status_code == 403, own.text
        assert own.json()["error"]["code"] == "insufficient_role"
    cleared = await stack.client.patch(f"/v1/admin/keys/{member_id}", headers=lead,
                                       json={"ip_deny": None})
    assert cleared.status_code == 403, cleared.text
    assert cleared.json()["error"]["code"] == "exceeds_own_limits"
    narrowed = await stack.client.patch(f"/v1/admin/keys/{member_id}", headers=lead,
                                        json={"ip_deny": ["127.0.0.5/32"]})
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["ip_deny"] == ["127.0.0.5/32"]

    # The admin is not limited, on any key.
    assert (await _create_key(stack, ADMIN)).status_code == 201
    lifted = await stack.client.patch(f"/v1/admin/keys/{lead_id}", headers=ADMIN,
                                      json={"ip_deny": None})
    assert lifted.status_code == 200 and lifted.json()["ip_deny"] is None

    # The console lists keys to whom may manage them, as /v1/admin/keys does.
    member = await stack.client.get("/console/api/keys", headers=stack.auth)
    assert member.status_code == 403
    assert member.json()["error"]["code"] == "insufficient_role"
    listed = await stack.client.get("/console/api/keys", headers=lead)
    assert listed.status_code == 200, listed.text
    assert {key["tenant"] for key in listed.json()["data"]} == {"acme"}
    assert member_id in {key["id"] for key in listed.json()["data"]}
