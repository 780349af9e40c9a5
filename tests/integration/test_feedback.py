"""Feedback on answers through the real stack: the openai SDK asks, httpx gives feedback.

Feedback on a chat answer (by two callers, one of them posting again), the comment kept
only under content storage, the aggregate in `GET /v1/usage`, `GET /v1/feedback` and the
`feedback_by_variant` view, tenant isolation, and feedback on a batch line by its custom id.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from broker.config import parse_config
from broker.settings import KafkaSettings
from broker.stores.keys import create_api_key
from broker.stores.tenants import set_tenant
from tests.integration.stack import SIM_BASE, Stack, eventually, running_stack
from tests.integration.test_batches import _create, _line, _until, _upload, batch_stack

pytestmark = [pytest.mark.integration, pytest.mark.kafka_engine("apache")]

MODEL = "gpt-4o-mini"
WIDE = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


async def _answered(stack: Stack, model: str = MODEL, user: str = "u") -> str:
    """Ask one chat question with the SDK; its request id once the ledger recorded it."""
    sdk = stack.openai()
    try:
        completion = await sdk.chat.completions.create(
            model=model, user=user, messages=[{"role": "user", "content": "Rate me."}])
    finally:
        await sdk.close()

    async def recorded() -> bool:
        state = await stack.client.get(f"/v1/requests/{completion.id}", headers=stack.auth)
        return state.status_code == 200 and state.json()["status"] == "succeeded"

    await eventually(recorded)
    return completion.id


async def _feedback(stack: Stack, path: str, body: dict[str, Any],
                    key: str | None = None) -> httpx.Response:
    return await stack.client.post(path, json=body, headers={
        "Authorization": f"Bearer {key or stack.api_key}"})


async def test_feedback_of_two_callers_is_reported_by_model_deployment_and_variant(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        request_id = await _answered(stack)
        path = f"/v1/requests/{request_id}/feedback"

        first = await _feedback(stack, path, {"score": 1, "label": "good", "comment": "Nice."})
        assert first.status_code == 201, first.text
        body = first.json()
        assert body["object"] == "feedback" and body["request_id"] == request_id
        assert body["score"] == 1 and body["label"] == "good"
        # No content storage for this tenant: the comment is content, so it is dropped.
        assert body["comment"] is None and body["comment_stored"] is False

        await set_tenant(stack.engine, "acme", store_content=True)
        colleague, _ = await create_api_key(stack.engine, "acme")
        second = await _feedback(stack, path, {"score": -0.5, "comment": "Too long."},
                                 key=colleague)
        assert second.status_code == 201, second.text
        assert second.json()["comment"] == "Too long." and second.json()["comment_stored"]
        # The first caller changes its mind and retries: its entry is replaced, twice.
        for _ in range(2):
            again = await _feedback(stack, path, {"score": 0.5, "label": "fine"})
            assert again.status_code == 200, again.text  # replaced, not created
            assert again.json()["id"] == body["id"] and again.json()["score"] == 0.5
        assert await stack.scalar("SELECT count(*) FROM feedback WHERE request_id = :id",
                                  id=request_id) == 2

        refused = await _feedback(stack, path, {"score": 3})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "score"

        async def usage_row() -> dict[str, Any] | None:
            reply = await stack.client.get("/v1/usage", headers=stack.auth,
                                           params=WIDE | {"group_by": "model,deployment"})
            rows = [row for row in reply.json()["data"] if row["calls"]]
            return rows[0] if rows else None

        row = await eventually(usage_row)  # the ledger records the call's usage apart
        assert row is not None
        assert (row["model"], row["deployment"]) == (MODEL, "sim")
        # One request, scored by the mean of its two callers' latest entries.
        assert row["feedback_count"] == 1 and row["feedback_mean_score"] == 0

        by_variant = await stack.client.get("/v1/feedback", headers=stack.auth, params=WIDE | {
            "group_by": "model,deployment,variant"})
        assert by_variant.status_code == 200, by_variant.text
        assert by_variant.json()["data"] == [{
            "model": MODEL, "deployment": "sim", "variant": None,
            "feedback_count": 1, "feedback_mean_score": 0}]
        assert await stack.scalar(
            "SELECT feedback_count || ':' || mean_score FROM feedback_by_variant "
            "WHERE tenant = 'acme' AND model = :m AND deployment = 'sim'", m=MODEL) == "1:0"


async def test_another_tenants_request_answers_404(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with running_stack(kafka_settings, database_url) as stack:
        request_id = await _answered(stack)
        other, _ = await create_api_key(stack.engine, "globex")
        for path in (f"/v1/requests/{request_id}/feedback", "/v1/requests/nope/feedback"):
            reply = await _feedback(stack, path, {"score": 1}, key=other)
            assert reply.status_code == 404, reply.text
        # The same 404 GET /v1/requests/{id} gives that tenant.
        assert (await stack.client.get(f"/v1/requests/{request_id}", headers={
            "Authorization": f"Bearer {other}"})).status_code == 404
        assert await stack.scalar("SELECT count(*) FROM feedback") == 0
        own = await _feedback(stack, f"/v1/requests/{request_id}/feedback", {"score": 0})
        assert own.status_code == 201
        report = await stack.client.get("/v1/feedback", params=WIDE,
                                        headers={"Authorization": f"Bearer {other}"})
        assert report.json()["data"] == [{"feedback_count": 0, "feedback_mean_score": None}]


async def test_batch_line_feedback_by_custom_id(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    async with batch_stack(kafka_settings, database_url) as stack:
        sdk = stack.openai()
        try:
            file_id = await _upload(sdk, [_line("q1", "First?"), _line("q2", "Second?")])
            batch = await _create(sdk, file_id)
            await _until(sdk, batch.id, {"completed"})
        finally:
            await sdk.close()
        path = f"/v1/batches/{batch.id}/feedback"

        reply = await _feedback(stack, path, {"custom_id": "q2", "score": 0.5, "label": "ok"})
        assert reply.status_code == 201, reply.text
        body = reply.json()
        line_request = await stack.scalar(
            "SELECT request_id FROM batch_requests WHERE batch_id = :b AND custom_id = 'q2'",
            b=batch.id)
        assert body["request_id"] == line_request
        assert (body["batch_id"], body["custom_id"]) == (batch.id, "q2")

        missing = await _feedback(stack, path, {"custom_id": "q9", "score": 0.5})
        assert missing.status_code == 404
        other, _ = await create_api_key(stack.engine, "globex")
        foreign = await _feedback(stack, path, {"custom_id": "q2", "score": 0.5}, key=other)
        assert foreign.status_code == 404
        assert await stack.scalar("SELECT count(*) FROM feedback") == 1


async def test_ab_variants_get_their_own_feedback(
    kafka_settings: KafkaSettings, database_url: str
) -> None:
    deployment = {"provider": "openai", "base_url": f"{SIM_BASE}/v1",
                  "input_usd_per_mtok": "1", "output_usd_per_mtok": "2"}
    config = parse_config({
        "models": {"ab": {"deployments": ["a", "b"], "routing": {
            "strategy": "weighted", "sticky": "user",
            "variants": {"a": {"deployment": "a", "weight": 50},
                         "b": {"deployment": "b", "weight": 50}}}}},
        "deployments": {name: {**deployment, "model": f"up-{name}"} for name in ("a", "b")},
    })
    async with running_stack(kafka_settings, database_url, config=config) as stack:
        given: dict[str, list[float]] = {"a": [], "b": []}
        for user in (f"user-{n}" for n in range(8)):
            request_id = await _answered(stack, "ab", user)
            variant = await stack.scalar("SELECT variant FROM requests WHERE id = :id",
                                         id=request_id)
            score = 1.0 if variant == "a" else -1.0  # the candidate answers worse
            given[variant].append(score)
            assert (await _feedback(stack, f"/v1/requests/{request_id}/feedback",
                                    {"score": score})).status_code == 201
        assert given["a"] and given["b"]  # the 8 users' sticky hashes fall on both sides

        async def both_priced() -> bool:  # the deployment comes from the usage rows
            return bool(await stack.scalar(
                "SELECT count(DISTINCT request_id) FROM usage_events WHERE model = 'ab'") == 8)

        await eventually(both_priced)
        reply = await stack.client.get("/v1/feedback", headers=stack.auth, params=WIDE | {
            "group_by": "model,deployment,variant"})
        assert reply.json()["data"] == [
            {"model": "ab", "deployment": name, "variant": name,
             "feedback_count": len(given[name]), "feedback_mean_score": given[name][0]}
            for name in ("a", "b")]
        assert await stack.scalar(
            "SELECT string_agg(variant || '=' || mean_score, ',' ORDER BY variant) "
            "FROM feedback_by_variant WHERE model = 'ab'") == "a=1,b=-1"
