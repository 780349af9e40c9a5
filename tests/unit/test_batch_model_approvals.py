"""Gated models asked about again when a batch launches (`workers.batches.approvals`): a
revoked approval answers the model's lines with the access error's code, as a template
line's, asked once per model (aliases included); the rest are untouched."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.access import AccessGate, Status
from broker.batches.lines import InputLine, parse_line
from broker.config import parse_config
from workers.batches.approvals import model_refusals, refused_lines
from workers.batches.launcher import _row

CHAT = "/v1/chat/completions"
CONFIG = parse_config({
    "models": {"gated": {"deployments": ["sim"], "requires_approval": True},
               "other-gated": {"deployments": ["sim"], "requires_approval": True},
               "open": {"deployments": ["sim"]}},
    "aliases": {"smart": "gated"},
    "deployments": {"sim": {"provider": "simulated", "model": "gpt-4o-mini"}},
})


class Grants:
    def __init__(self, statuses: dict[str, list[Status]]):
        self.statuses_of = statuses
        self.asked: list[tuple[str, str, str]] = []

    async def statuses(self, tenant: str, key_id: str, resource: str) -> list[Status]:
        self.asked.append((tenant, key_id, resource))
        return self.statuses_of.get(resource, [])


def _batch(models: list[str], key: str | None = "key_1") -> tuple[str, str | None, list[str]]:
    """A batch's tenant, key and models, as `model_refusals` takes them."""
    return "acme", key, models


def _line(number: int, model: str) -> InputLine:
    raw = (f'{{"custom_id": "c{number}", "method": "POST", "url": "{CHAT}", "body": '
           f'{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}}}')
    parsed = parse_line(number, raw.encode(), CHAT,
                        frozenset({"gated", "smart", "other-gated", "open"}))
    assert isinstance(parsed, InputLine) and parsed.body is not None
    return parsed


async def test_only_models_no_longer_approved_are_refused_each_asked_once() -> None:
    grants = Grants({"model:gated": ["denied"], "model:other-gated": ["approved"]})
    refusals = await model_refusals(AccessGate(grants, ttl_s=0), CONFIG,
                                    *_batch(["gated", "smart", "other-gated", "open"]))
    assert {name: refused.code for name, refused in refusals.items()} == {
        "gated": "access_denied", "smart": "access_denied"}  # the alias with its model
    assert sorted(grants.asked) == [("acme", "key_1", "model:gated"),
                                    ("acme", "key_1", "model:other-gated")]


async def test_pending_and_never_requested_are_refused_with_their_codes() -> None:
    pending = await model_refusals(AccessGate(Grants({"model:gated": ["pending"]})), CONFIG,
                                   *_batch(["gated"]))
    assert pending["gated"].code == "access_pending"
    grants = Grants({})
    keyless = await model_refusals(AccessGate(grants), CONFIG, *_batch(["gated"], key=None))
    assert keyless["gated"].code == "access_required"
    assert grants.asked == [("acme", "", "model:gated")]  # judged by the tenant's grants


async def test_without_a_config_nothing_is_known_to_need_approval() -> None:
    assert await model_refusals(AccessGate(Grants({})), None, *_batch(["gated"])) == {}


async def test_refused_lines_are_answered_in_the_error_file_the_rest_run() -> None:
    refusals = await model_refusals(AccessGate(Grants({"model:gated": ["denied"]})), CONFIG,
                                    *_batch(["gated", "smart", "open"]))
    lines = [_line(1, "gated"), _line(2, "open"), _line(3, "smart")]
    answered = refused_lines(lines, refusals)
    assert answered[1] is lines[1]
    for refused in (answered[0], answered[2]):
        assert refused.body is None and refused.code == "access_denied"
        assert refused.problem is not None and "model:gated" in refused.problem
        row = _row("batch_1", refused, datetime.now(UTC))
        assert (row["status"], row["status_code"]) == ("failed", 400)
        assert row["body"]["error"]["code"] == "access_denied"
    assert refused_lines(lines, {}) is lines
