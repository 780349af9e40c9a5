"""Budget-alert options of `sluice tenants set` and `sluice keys alerts`, and their display.

The rules live in PostgreSQL (`broker.stores.budget_alerts`); the ledger's spend trigger
reads them on its next batch, so a change needs no restart.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker.errors import ConfigError
from broker.stores.budget_alerts import (
    AlertRule,
    FiredAlert,
    describe_alert,
    describe_rule,
    parse_thresholds,
    set_alert_rule,
    set_key_alert_rule,
    tenant_scope,
)
from sluice.keys_cli import _money, with_engine

_CLEAR = ("none", "off", "")


def alert_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The rule changes `--alert-thresholds` and `--daily-spend-alert` ask for (none given:
    empty)."""
    changes: dict[str, Any] = {}
    thresholds = getattr(args, "alert_thresholds", None)
    if thresholds is not None:
        changes["thresholds_pct"] = parse_thresholds(thresholds)
    daily = getattr(args, "daily_spend_alert", None)
    if daily is not None:
        amount = None if daily.lower() in _CLEAR else _money(daily, "--daily-spend-alert")
        if amount is not None and amount <= 0:
            raise ConfigError("--daily-spend-alert: must be a positive amount (or 'none')")
        changes["daily_usd"] = amount
    return changes


async def set_tenant_alerts(engine: Any, tenant: str,
                            changes: dict[str, Any]) -> AlertRule:
    """Apply `changes` to the rule of `tenant`."""
    return await set_alert_rule(engine, tenant_scope(tenant), tenant, **changes)


def run_keys_alerts(args: argparse.Namespace) -> int:
    """`sluice keys alerts KEY_ID [--alert-thresholds 50,80,100] [--daily-spend-alert 25]`."""
    changes = alert_changes(args)

    rule = with_engine(lambda engine: set_key_alert_rule(engine, args.key_id, changes))
    if rule is None:
        print(f"no API key {args.key_id}")
        return 1
    print(f"key {args.key_id}: budget alerts {rule_text(rule)} (the key's monthly budget "
          "is what the percentages refer to)")
    return 0


def rule_text(rule: AlertRule | None) -> str:
    """A rule for people, "none" when it alerts on nothing."""
    text = describe_rule(rule)
    return "none" if text == "-" else text


def last_fired_text(alert: FiredAlert | None) -> str:
    """`80% at $4.01 (12-05 14:03)`, or "-"."""
    return describe_alert(alert)
