"""Budget alerts: threshold parsing and crossing arithmetic, and how rules and alerts show."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from broker.errors import ConfigError
from broker.stores.budget_alerts import (
    AlertRule,
    FiredAlert,
    alert_json,
    crossed_thresholds,
    describe_rule,
    parse_thresholds,
)
from sluice.alerts_cli import alert_changes, last_fired_text


def test_thresholds_parse_sorted_and_distinct() -> None:
    assert parse_thresholds("100, 50,80,50%") == (50, 80, 100)
    assert parse_thresholds("none") == ()
    assert parse_thresholds("") == ()


@pytest.mark.parametrize("raw", ["0", "abc", "50,,80", "-5", "1001", "12.5"])
def test_thresholds_refuse_what_is_not_a_percentage(raw: str) -> None:
    with pytest.raises(ConfigError):
        parse_thresholds(raw)


def test_a_threshold_is_crossed_when_spend_reaches_it_exactly() -> None:
    budget = Decimal("10")
    assert crossed_thresholds([50, 80, 100], Decimal("4.9999999999"), budget) == []
    assert crossed_thresholds([50, 80, 100], Decimal("5"), budget) == ["50%"]
    assert crossed_thresholds([100, 50, 80], Decimal("8.5"), budget) == ["50%", "80%"]
    # One batch may jump over several thresholds: each is reached.
    assert crossed_thresholds([50, 80, 100], Decimal("12"), budget) == ["50%", "80%", "100%"]
    assert crossed_thresholds([150], Decimal("15"), budget) == ["150%"]


def test_no_budget_crosses_nothing() -> None:
    assert crossed_thresholds([50], Decimal("1000"), None) == []
    assert crossed_thresholds([50], Decimal("1000"), Decimal(0)) == []


def test_rules_read_for_people() -> None:
    assert describe_rule(None) == "-"
    rule = AlertRule("tenant:acme", "acme", (50, 80, 100), Decimal("25.0000000000"))
    assert describe_rule(rule) == "50,80,100% · $25/day"
    assert describe_rule(AlertRule("key:k", "acme", (), Decimal("20.00"))) == "$20/day"


def _alert(scope: str, threshold: str, at: datetime, period: date) -> FiredAlert:
    return FiredAlert(scope, "acme", threshold, period, Decimal("5.1234567891"),
                      Decimal("10.0000000000"), at)


def test_fired_alerts_show_their_period_and_exact_money() -> None:
    at = datetime(2026, 12, 5, 14, 3, tzinfo=UTC)
    monthly = alert_json(_alert("key:key_1", "50%", at, date(2026, 12, 1)))
    assert monthly["period"] == "2026-12" and monthly["key"] == "key_1"
    assert monthly["spend_usd"] == "5.1234567891" and monthly["budget_usd"] == "10"
    daily = alert_json(_alert("tenant:acme", "daily", at, date(2026, 12, 5)))
    assert daily["period"] == "2026-12-05" and daily["key"] is None
    assert last_fired_text(_alert("tenant:acme", "80%", at, date(2026, 12, 1))) == (
        "80% at $5.1235 (12-05 14:03)")
    assert last_fired_text(None) == "-"


def test_cli_options_become_rule_changes() -> None:
    args = argparse.Namespace(alert_thresholds="80,50", daily_spend_alert="25")
    assert alert_changes(args) == {"thresholds_pct": (50, 80), "daily_usd": Decimal("25")}
    cleared = argparse.Namespace(alert_thresholds="none", daily_spend_alert="off")
    assert alert_changes(cleared) == {"thresholds_pct": (), "daily_usd": None}
    assert alert_changes(argparse.Namespace()) == {}
    with pytest.raises(ConfigError):
        alert_changes(argparse.Namespace(alert_thresholds=None, daily_spend_alert="0"))
