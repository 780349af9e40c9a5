"""`sluice bench ledger`: its arguments, and the plain helpers of the write path."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluice.cli import build_parser
from sluice.ledger_bench import usage_rows
from workers.ledger.store import usage_arrays, usage_statement


def test_bench_ledger_parses_and_leaves_the_http_bench_alone() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "ledger", "--rows", "1000", "--events", "200",
                              "--batch-size", "50", "--database-url", "postgresql://x/y"])
    assert (args.mode, args.rows, args.events, args.batch_size, args.days) == (
        "ledger", 1000, 200, 50, 90.0)
    assert args.database_url == "postgresql://x/y"
    defaults = parser.parse_args(["bench", "ledger"])
    assert (defaults.rows, defaults.events, defaults.batch_size) == (10_000_000, 200_000, 2000)
    http = parser.parse_args(["bench", "--concurrency", "8", "--requests", "10"])
    assert (http.mode, http.concurrency, http.requests) == (None, 8, 10)
    assert parser.parse_args(["bench", "--chaos"]).chaos


def test_bench_refuses_an_unknown_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "ledgers"])
    assert "invalid choice" in capsys.readouterr().err


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
