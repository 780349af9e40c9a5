"""Models that require approval, asked about again when a batch launches.

A batch's `models` (fixed at creation by `ingress.access.batch_models`) hold the gated
models its key was approved for then. An approval revoked (or a request reopened) since
must stop the batch's lines too, and workers do not ask: launched lines are
service-signed, so worker admission trusts them. The launcher therefore asks the access
gate again, once per gated model, as it asks about templates that require approval
(`workers.batches.templated`), and answers the lines of a refused model in the error file
with the access error's code, as a refused template line is answered; the rest runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from broker.access import AccessGate
from broker.batches.lines import InputLine
from broker.config import SluiceConfig
from broker.errors import AccessNotApproved
from broker.routing import resolve_alias


async def model_refusals(gate: AccessGate, config: SluiceConfig | None, tenant: str,
                         api_key_id: str | None, models: Iterable[str]
                         ) -> dict[str, AccessNotApproved]:
    """Why key `api_key_id` of `tenant` (a batch's) may no longer use each name of
    `models` (the batch's: models, or aliases of them) whose model requires approval;
    names still approved are absent.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached (the launch is retried).
    """
    if config is None:  # without a config no model is known to require approval
        return {}
    answers: dict[str, AccessNotApproved | None] = {}  # asked once per model
    refusals: dict[str, AccessNotApproved] = {}
    for name in models:
        served = resolve_alias(config, name)
        model = config.models.get(served)
        if model is None or not model.requires_approval:
            continue
        if served not in answers:
            answers[served] = None
            try:
                # A batch made without a key is judged by its tenant's grants.
                await gate.require(tenant, api_key_id or "", f"model:{served}")
            except AccessNotApproved as refusal:
                answers[served] = refusal
        answer = answers[served]
        if answer is not None:
            refusals[name] = answer
    return refusals


def refused_lines(lines: list[InputLine], refusals: dict[str, AccessNotApproved]
                  ) -> list[InputLine]:
    """`lines`, those naming a model of `refusals` answered with its access error (code
    `access_denied`, `access_pending` or `access_required`; status 400 in the error file,
    as a template line's)."""
    if not refusals:
        return lines
    answered = []
    for line in lines:
        refused = refusals.get(line.body.model) if line.body is not None else None
        answered.append(line if refused is None else
                        replace(line, body=None, problem=str(refused), code=refused.code))
    return answered
