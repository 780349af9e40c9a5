"""The ledger's metrics for one recorded batch: rows, lag, spend, dead letters.

Called once a batch is durable and its dead letters are out, just before its offsets are
committed. A batch redelivered after a crash between that point and the commit is counted
again: the counters are a rate to watch, the ledger's tables are the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from broker import metrics
from workers.ledger.rows import Kind, LedgerBatch, Poison

# The time each kind of row is late against: a call's or a request's finish, or (a request
# just queued) its acceptance.
_EVENT_TIME = {Kind.USAGE: "finished_at", Kind.RESULT: "finished_at", Kind.REQUEST: "created_at"}


def observe_batch(batch: LedgerBatch, refused: Sequence[Poison],
                  recorded_at: datetime | None = None) -> None:
    """Count what `batch` wrote (all but `refused`) and what went to the dead letters."""
    now = recorded_at or datetime.now(UTC)
    not_written = {id(poison.record) for poison in refused}
    for kind, rows in batch.rows.items():
        for row in rows:
            if id(row.record) in not_written:
                continue
            metrics.observe_ledger_row(kind.value, row.values.get(_EVENT_TIME[kind]), now)
            if kind is Kind.USAGE:  # priced in place by the write (workers.ledger.pricing)
                values = row.values
                metrics.observe_spend(values["model"], values["deployment"], values["tenant"],
                                      values.get("cost_usd"))
    metrics.observe_dead_letter("ledger", "poison", len(batch.poison))
    metrics.observe_dead_letter("ledger", "database_refused", len(refused))
