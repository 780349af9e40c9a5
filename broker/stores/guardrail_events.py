"""`guardrail_events`: the ledger's record of every guardrail decision, and how to read it.

Rows come from final results (`InferenceResult.guardrails`); they name policy, rule and
action, never the matched text. Inserts are idempotent (one row per request, policy, rule,
action and stage), so a redelivered result adds nothing, and a row is written only for a
request recorded under the same tenant: a result naming another tenant's request (which
the ledger refuses) cannot plant decisions in that tenant's name either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.stores.database import database_errors
from broker.stores.tables import guardrail_events

_INSERT = text("""
INSERT INTO guardrail_events (request_id, tenant, model, policy, rule, action, stage, count)
SELECT e.request_id, e.tenant, e.model, e.policy, e.rule, e.action, e.stage, e.count
FROM unnest(CAST(:request_id AS TEXT[]), CAST(:tenant AS TEXT[]), CAST(:model AS TEXT[]),
            CAST(:policy AS TEXT[]), CAST(:rule AS TEXT[]), CAST(:action AS TEXT[]),
            CAST(:stage AS TEXT[]), CAST(:count AS INTEGER[]))
     AS e(request_id, tenant, model, policy, rule, action, stage, count)
JOIN requests r ON r.id = e.request_id AND r.tenant = e.tenant
ON CONFLICT ON CONSTRAINT uq_guardrail_events_decision DO NOTHING
""")
_COLUMNS = ("request_id", "tenant", "model", "policy", "rule", "action", "stage", "count")


@dataclass(frozen=True, slots=True)
class GuardrailEvent:
    """One decision as a row."""

    request_id: str
    tenant: str
    model: str
    policy: str
    rule: str
    action: str
    stage: str
    count: int


def events_of_results(results: Iterable[Mapping[str, Any]]) -> list[GuardrailEvent]:
    """The decisions of final results, as `requests` row values (`result` holds the JSON)."""
    events = []
    for values in results:
        result = values.get("result") or {}
        for decision in result.get("guardrails") or ():
            events.append(GuardrailEvent(
                request_id=values["id"], tenant=values["tenant"], model=values["model"],
                policy=decision["policy"], rule=decision["rule"], action=decision["action"],
                stage=decision["stage"], count=int(decision.get("count", 1))))
    return events


async def insert_guardrail_events(connection: AsyncConnection,
                                  events: Sequence[GuardrailEvent]) -> None:
    """Insert decisions not recorded yet (one statement), inside the caller's transaction."""
    if not events:
        return
    arrays = {name: [getattr(event, name) for event in events] for name in _COLUMNS}
    await connection.execute(_INSERT, arrays)


async def guardrail_events_of(engine: AsyncEngine, request_id: str) -> list[GuardrailEvent]:
    """The decisions recorded for one request (tests, operators)."""
    table = guardrail_events.c
    statement = select(*(table[name] for name in _COLUMNS)).where(
        table.request_id == request_id).order_by(table.id)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return [GuardrailEvent(*row) for row in rows]
