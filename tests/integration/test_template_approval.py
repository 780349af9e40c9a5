"""Templates that require approval, end to end: `POST /v1/templates/{name}/completions`
answers 403 (`access_required`, `access_pending`, `access_denied`) until an admin approved
`template:<name>` for the caller; the latest version's flag decides for pinned versions
too; the self-request route and `sluice access request|approve` open it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai.types.chat import ChatCompletion

from broker.settings import IngressSettings, KafkaSettings
from broker.stores.keys import create_api_key
from sluice.cli import main
from tests.integration.stack import Stack, eventually, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

ADMIN_KEY = "sk-admin-template-approval-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SUMMARY: dict[str, Any] = {
    "name": "summary",
    "messages": [{"role": "user", "content": "Summarise: {{ text }}"}],
    "parameters": {"model": "gpt-4o-mini"},
    "variables": [{"name": "text", "type": "string", "required": True}],
}


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, database_url: str) -> AsyncIterator[Stack]:
    ingress = IngressSettings(sync_timeout_s=20, admin_key=ADMIN_KEY)
    async with running_stack(kafka_settings, database_url, ingress=ingress) as running:
        yield running


async def _create(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    response = await stack.client.post("/v1/admin/templates", headers=ADMIN, json=spec)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _outcome(client: openai.AsyncOpenAI, version: int | None = None,
                   variables: dict[str, Any] | None = None) -> str:
    """'ok', or the refusal's error code, of one template call through the openai SDK."""
    body: dict[str, Any] = {"variables": {"text": "a long report"}
                            if variables is None else variables}
    if version is not None:
        body["version"] = version
    try:
        answer = await client.post("/templates/summary/completions", cast_to=ChatCompletion,
                                   body=body)
    except openai.PermissionDeniedError as refused:
        assert refused.status_code == 403
        return str(refused.code)
    assert answer.choices[0].message.content
    return "ok"


async def test_a_template_requiring_approval_is_refused_until_approved(stack: Stack) -> None:
    await _create(stack, SUMMARY)
    globex_secret, _ = await create_api_key(stack.engine, "globex")
    async with stack.openai() as acme, stack.openai(globex_secret) as globex:
        assert await _outcome(acme) == "ok"  # version 1 needs no approval

        second = await _create(stack, SUMMARY | {"requires_approval": True})
        assert (second["version"], second["requires_approval"]) == (2, True)
        # The latest version decides, for pinned older versions too; and before rendering
        # (missing variables would be a 400).
        assert await _outcome(acme) == "access_required"
        assert await _outcome(acme, version=1) == "access_required"
        assert await _outcome(acme, variables={}) == "access_required"

        # The admin API shows the flag per version.
        listed = (await stack.client.get("/v1/admin/templates", headers=ADMIN)).json()
        assert [(t["name"], t["requires_approval"]) for t in listed["data"]] == [
            ("summary", True)]
        first = await stack.client.get("/v1/admin/templates/summary?version=1", headers=ADMIN)
        assert first.json()["requires_approval"] is False

        # The caller asks for itself; an unknown template cannot be asked for.
        unknown = await stack.client.post("/v1/access/requests", headers=stack.auth, json={
            "resource": "template:nope", "reason": "typo"})
        assert unknown.status_code == 404, unknown.text
        asked = await stack.client.post("/v1/access/requests", headers=stack.auth, json={
            "resource": "template:summary", "reason": "weekly digests"})
        assert asked.status_code == 200, asked.text
        grant = asked.json()
        assert (grant["status"], grant["resource"]) == ("pending", "template:summary")
        assert await _outcome(acme) == "access_pending"

        approved = await stack.client.post(f"/v1/admin/access/{grant['id']}/approve",
                                           headers=ADMIN, json={"reason": "fine"})
        assert approved.json()["status"] == "approved", approved.text
        assert await _outcome(acme) == "ok"
        assert await _outcome(acme, version=1) == "ok"
        assert await _outcome(globex) == "access_required"  # acme's key only

        await stack.client.post(f"/v1/admin/access/{grant['id']}/deny", headers=ADMIN,
                                json={"reason": "project over"})
        assert await _outcome(acme) == "access_denied"
        assert await _outcome(acme, version=1) == "access_denied"


async def test_the_cli_creates_requests_and_approves_template_access(
    stack: Stack, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "250")

    async def sluice(*argv: str) -> str:
        # The CLI runs its own event loop: in a thread, beside the stack's.
        assert await asyncio.to_thread(main, list(argv)) == 0
        return capsys.readouterr().out

    path = tmp_path / "summary.yaml"
    path.write_text(yaml.safe_dump({key: SUMMARY[key] for key in
                                    ("messages", "parameters", "variables")}
                                   | {"requires_approval": True}))
    assert "version 1 created" in await sluice("templates", "create", "summary",
                                               "--file", str(path))
    assert (await sluice("templates", "list")).split("\t")[-1].strip() == "requires approval"

    async with stack.openai() as acme:
        assert await _outcome(acme) == "access_required"
        granted = await sluice("access", "request", "template:summary", "--tenant", "acme",
                               "--reason", "pilot")
        grant_id = granted.split()[0]

        # The CLI decides in the database: this ingress sees it once its cache expires.
        async def outcome_is(wanted: str) -> bool:
            return await _outcome(acme) == wanted

        await eventually(lambda: outcome_is("access_pending"))
        assert f"{grant_id} approved template:summary" in await sluice(
            "access", "approve", grant_id, "--reason", "ok")
        await eventually(lambda: outcome_is("ok"))
