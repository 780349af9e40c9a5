"""`sluice usage` and `sluice ledger reconcile`: read the ledger from the command line.

Settings come from the environment (`SLUICE_DATABASE_URL`, `SLUICE_KAFKA_BOOTSTRAP`,
`SLUICE_TOPIC_PREFIX`).
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

from rich.table import Table

from broker.settings import DatabaseSettings, KafkaSettings
from broker.stores.database import create_engine
from broker.stores.usage import (
    METRICS,
    csv_text,
    parse_group_by,
    parse_since,
    parse_time,
    usage_report,
)
from sluice.keys_cli import console, with_engine


def run_usage(args: argparse.Namespace) -> int:
    """`sluice usage --by model,day --since 7d [--csv]`: totals as a table or CSV."""
    group_by = parse_group_by(args.by)
    start = parse_since(args.since)
    end = parse_time(args.until, param="until") if args.until else datetime.now(UTC)
    rows = with_engine(lambda e: usage_report(
        e, start=start, end=end, group_by=group_by, tenant=args.tenant
    ))
    if args.csv:
        print(csv_text(rows, group_by), end="")
        return 0
    title = f"usage {start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC"
    table = Table(*group_by, *METRICS, title=title)
    for column in table.columns[len(group_by):]:
        column.justify = "right"
    for row in rows:
        table.add_row(*("" if row[k] is None else str(row[k]) for k in (*group_by, *METRICS)))
    console().print(table)
    return 0


def run_reconcile(args: argparse.Namespace) -> int:
    """`sluice ledger reconcile [--since T]`: exit 1 if events are missing or duplicated."""
    from workers.ledger.reconcile import reconcile

    since = parse_since(args.since) if args.since else None

    async def main() -> int:
        engine = create_engine(DatabaseSettings())
        try:
            report = await reconcile(KafkaSettings(), engine, since)
        finally:
            await engine.dispose()
        print(f"usage topic: {report.records} records, {report.events} events "
              f"({report.redelivered} redelivered, {report.poison} undecodable)")
        print(f"missing: {len(report.missing)}")
        for event_id in report.missing[:50]:
            print(f"  {event_id}")
        print(f"duplicate: {len(report.duplicates)}")
        for request_id, provider_id, events in report.duplicates[:50]:
            print(f"  {request_id} {provider_id}: {', '.join(events)}")
        return 0 if report.ok else 1

    return asyncio.run(main())
