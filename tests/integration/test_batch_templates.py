"""Prompt templates as Batch API lines, driven by the official `openai` SDK through the
real stack: plain and template lines (latest and pinned versions) in one file, a bad
variable and an unapproved template answered in the error file, then approval opens the
next batch, and a version published after a batch was made is not the one it runs; the
ledger's `requests` rows name template and version, on the worker lane and on the native
lane alike."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from broker.settings import IngressSettings, KafkaSettings
from broker.stores.templates import create_template
from broker.templates import TemplateSpec
from tests.integration.stack import Stack, eventually
from tests.integration.test_batches import (
    FINAL,
    MODEL,
    _create,
    _line,
    _lines,
    _until,
    _upload,
    batch_stack,
)
from tests.integration.test_native_batches import OPENAI_MODEL, _expected_text, _native_stack

pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

ADMIN_KEY = "batch-templates-admin-" + "0123456789abcdef" * 3
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
GREET: dict[str, Any] = {
    "name": "greet",
    "messages": [{"role": "user", "content": "Say hello to {{ name }}."}],
    "parameters": {"model": MODEL, "temperature": 0.2},
    "variables": [{"name": "name", "type": "string", "required": True}],
}
# Version 2: another prompt, and a parameter that cuts the answer short.
GREET_V2 = GREET | {"messages": [{"role": "user", "content": "Greet {{ name }} warmly."}],
                    "parameters": {"model": MODEL, "max_tokens": 3}}
SECRET: dict[str, Any] = {
    "name": "secret", "requires_approval": True,
    "messages": [{"role": "user", "content": "Tell {{ name }} the secret."}],
    "parameters": {"model": MODEL},
    "variables": [{"name": "name", "type": "string", "required": True}],
}


def _call(custom_id: str, name: str, variables: dict[str, Any],
          **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST",
            "url": f"/v1/templates/{name}/completions",
            "body": {"variables": variables, **body}}


async def _templates_of(stack: Stack, ids: list[str]) -> dict[str, tuple[Any, Any]]:
    """(template, template_version) of each `requests` row of `ids`, once all are final."""
    async def rows() -> dict[str, tuple[Any, Any]]:
        async with stack.engine.connect() as connection:
            found = (await connection.execute(text(
                "SELECT id, template, template_version FROM requests WHERE id = ANY(:ids) "
                "AND status = 'succeeded' AND lane = 'batch'"), {"ids": ids})).all()
        return {row.id: (row.template, row.template_version) for row in found} \
            if len(found) == len(ids) else {}

    return await eventually(rows, 30)


async def test_template_lines_run_in_a_batch_and_reach_the_ledger(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    ingress = IngressSettings(sync_timeout_s=20, admin_key=SecretStr(ADMIN_KEY))
    async with batch_stack(kafka_settings, database_url, ingress=ingress) as stack:
        for spec in (GREET, GREET_V2, SECRET):
            created = await stack.client.post("/v1/admin/templates", json=spec, headers=ADMIN)
            assert created.status_code == 201, created.text
        sdk = stack.openai()
        lines = [
            _line("plain", "Say hello to Ada."),
            _call("latest", "greet", {"name": "Ada"}),
            _call("pinned", "greet", {"name": "Ada"}, version=1),
            _call("bad-variable", "greet", {"name": "Ada", "nmae": "typo"}),
            _call("unapproved", "secret", {"name": "Ada"}),
        ]
        first = await _until(sdk, (await _create(sdk, await _upload(sdk, lines))).id, FINAL)
        assert first.status == "completed", first
        assert first.request_counts is not None
        assert first.request_counts.model_dump() == {"total": 5, "completed": 3, "failed": 2}

        output = {o["custom_id"]: o for o in await _lines(sdk, first.output_file_id)}
        assert sorted(output) == ["latest", "pinned", "plain"]
        bodies = {custom_id: o["response"]["body"] for custom_id, o in output.items()}
        # Version 1 renders the plain line's prompt; version 2 another, cut short.
        pinned_text = bodies["pinned"]["choices"][0]["message"]["content"]
        assert pinned_text == _expected_text(
            {"model": MODEL, "temperature": 0.2,
             "messages": [{"role": "user", "content": "Say hello to Ada."}]}, MODEL)
        assert bodies["latest"]["choices"][0]["message"]["content"] == _expected_text(
            {"model": MODEL, "max_tokens": 3,
             "messages": [{"role": "user", "content": "Greet Ada warmly."}]}, MODEL)
        assert bodies["latest"]["choices"][0]["finish_reason"] == "length"
        assert bodies["plain"]["choices"][0]["message"]["content"] == pinned_text

        errors = {e["custom_id"]: e["response"] for e in await _lines(sdk, first.error_file_id)}
        assert sorted(errors) == ["bad-variable", "unapproved"]
        assert errors["bad-variable"]["status_code"] == 400
        bad = errors["bad-variable"]["body"]["error"]
        assert bad["code"] == "unknown_variable" and "'nmae'" in bad["message"]
        refused = errors["unapproved"]["body"]["error"]
        assert errors["unapproved"]["status_code"] == 400
        assert refused["code"] == "access_required" and "template:secret" in refused["message"]

        recorded = await _templates_of(stack, [output[c]["id"] for c in output])
        assert {c: recorded[output[c]["id"]] for c in output} == {
            "plain": (None, None), "latest": ("greet", 2), "pinned": ("greet", 1)}

        # The key asks, an admin approves: the next batch runs the template.
        asked = await stack.client.post("/v1/access/requests", headers=stack.auth, json={
            "resource": "template:secret", "reason": "nightly job"})
        assert asked.status_code == 200, asked.text
        approved = await stack.client.post(f"/v1/admin/access/{asked.json()['id']}/approve",
                                           headers=ADMIN)
        assert approved.status_code == 200, approved.text
        second_lines = [_call("approved", "secret", {"name": "Ada"})]
        second = await _until(
            sdk, (await _create(sdk, await _upload(sdk, second_lines))).id, FINAL)
        assert second.status == "completed", second
        assert second.error_file_id is None
        [answer] = await _lines(sdk, second.output_file_id)
        assert answer["response"]["status_code"] == 200
        assert answer["response"]["body"]["choices"][0]["message"]["content"] == \
            _expected_text({"model": MODEL, "messages": [
                {"role": "user", "content": "Tell Ada the secret."}]}, MODEL)
        assert (await _templates_of(stack, [answer["id"]])) == {answer["id"]: ("secret", 1)}

        # A version published after a batch was made (as if during its launch, or before a
        # relaunch): the batch's lines that name no version keep the one latest then.
        async with stack.engine.begin() as connection:
            await connection.execute(text(
                "UPDATE prompt_templates SET created_at = now() + interval '1 hour' "
                "WHERE name = 'greet' AND version = 2"))
        third = await _until(sdk, (await _create(sdk, await _upload(
            sdk, [_call("then", "greet", {"name": "Ada"})]))).id, FINAL)
        [then] = await _lines(sdk, third.output_file_id)
        assert then["response"]["body"]["choices"][0]["message"]["content"] == pinned_text
        assert (await _templates_of(stack, [then["id"]])) == {then["id"]: ("greet", 1)}
        await sdk.close()


async def test_native_lane_template_lines_record_their_template(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    # Native lines never pass a request topic: the launcher writes their `requests` rows.
    async with _native_stack(kafka_settings, database_url, in_progress_s=0.2,
                             chunk_lines=10) as (stack, _, _upstream):
        spec = GREET | {"parameters": {"model": OPENAI_MODEL}}
        await create_template(stack.engine, TemplateSpec.model_validate(spec))
        sdk = stack.openai()
        lines = [_call("native", "greet", {"name": "Ada"}), _line("plain", "hi")]
        batch = await _until(sdk, (await _create(sdk, await _upload(sdk, lines))).id, FINAL,
                             timeout_s=60)
        assert batch.status == "completed", batch
        output = {o["custom_id"]: o for o in await _lines(sdk, batch.output_file_id)}
        assert output["native"]["response"]["body"]["choices"][0]["message"]["content"] == \
            _expected_text({"model": OPENAI_MODEL, "messages": [
                {"role": "user", "content": "Say hello to Ada."}]}, OPENAI_MODEL)
        recorded = await _templates_of(stack, [o["id"] for o in output.values()])
        assert recorded == {output["native"]["id"]: ("greet", 1),
                            output["plain"]["id"]: (None, None)}
        await sdk.close()
