"""`sluice bench ledger`: its arguments, and the plain helpers of the write path."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluice.cli import build_parser
from sluice.ledger_bench import usage_rows
from workers.ledger.store import usage_arrays, usage_statement


def test_each_benchmark_is_a_subcommand_with_its_own_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "ledger", "--rows", "1000", "--events", "200",
                              "--batch-size", "50", "--database-url", "postgresql://x/y"])
    assert (args.bench_command, args.rows, args.events, args.batch_size, args.days) == (
        "ledger", 1000, 200, 50, 90.0)
    assert args.database_url == "postgresql://x/y"
    defaults = parser.parse_args(["bench", "ledger"])
    assert (defaults.rows, defaults.events, defaults.batch_size) == (10_000_000, 200_000, 2000)
    sync = parser.parse_args(["bench", "sync", "--concurrency", "8", "--requests", "10"])
    assert (sync.bench_command, sync.concurrency, sync.requests) == ("sync", 8, 10)
    assert parser.parse_args(["bench", "chaos", "--error-rate", "0.3"]).error_rate == 0.3
    budget = parser.parse_args(["bench", "budget", "600:60000", "--kafka", "tansu"])
    assert (budget.budget, budget.kafka) == ("600:60000", "tansu")
    assert parser.parse_args(["bench", "async"]).drain_timeout_s == 600.0
    assert parser.parse_args(["bench", "lanes"]).kafka == "apache"
    handlers = {kind: parser.parse_args(["bench", kind, *extra]).handler
                for kind, extra in [("sync", []), ("async", []), ("budget", ["1:1"]),
                                    ("chaos", []), ("lanes", []), ("ledger", [])]}
    assert all(callable(run) for run in handlers.values())


@pytest.mark.parametrize("argv", [["bench", "ledgers"], ["bench"], ["bench", "sync", "--chaos"]])
def test_bench_refuses_unknown_kinds_and_options(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_usage_arrays_follow_the_row_keys_in_table_order() -> None:
    rows = usage_rows(3, datetime(2026, 11, 28, tzinfo=UTC))
    rows[1].values["price_id"] = 7
    rows[2].values.pop("provider_request_id")
    columns, arrays = usage_arrays(rows)
    assert columns[:3] == ("event_id", "request_id", "tenant")
    assert arrays["price_id"] == [None, 7, None]
    assert arrays["provider_request_id"][2] is None
    # A key the table does not have is an error, not a value dropped on the floor.
    rows[0].values["no_such_column"] = 1
    with pytest.raises(KeyError):
        usage_arrays(rows)


def test_usage_statement_casts_each_array_to_its_column_type() -> None:
    sql = usage_statement(("event_id", "input_tokens", "cost_usd", "finished_at")).text
    assert "INSERT INTO usage_events (event_id, input_tokens, cost_usd, finished_at)" in sql
    assert "CAST(:cost_usd AS NUMERIC(20, 10)[])" in sql
    assert "CAST(:finished_at AS TIMESTAMP WITH TIME ZONE[])" in sql
    assert usage_statement(("event_id",)) is usage_statement(("event_id",))  # built once
