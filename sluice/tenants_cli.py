"""`sluice tenants …`: budgets and the content-storage opt-in of tenants, in PostgreSQL."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from broker.errors import ConfigError
from broker.stores.access_lists import (
    IpLists,
    describe_ip_lists,
    set_tenant_ip_lists,
    tenant_ip_lists,
)
from broker.stores.admission import month_of
from broker.stores.budget_alerts import alert_rules, describe_rule, last_alerts
from broker.stores.tenants import list_tenants, set_tenant, spend_accounts_of
from sluice.alerts_cli import alert_changes, last_fired_text, rule_text, set_tenant_alerts
from sluice.keys_cli import _money, budget_text, cidrs_option, console, with_engine

_CLEAR = ("none", "off", "")


def _usd_option(raw: str | None) -> Any:
    if raw is None:
        return ...  # not given: leave as it is
    return None if raw.lower() in _CLEAR else _money(raw, "--monthly-budget-usd")


def _count_option(raw: str | None, option: str) -> Any:
    if raw is None:
        return ...
    if raw.lower() in _CLEAR:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{option}: {raw!r} is not a positive whole number (or 'none')")
    return int(raw)


def _tokens_option(raw: str | None) -> Any:
    if raw is None:
        return ...
    if raw.lower() in _CLEAR:
        return None
    if not raw.isdigit():
        raise ConfigError(f"--monthly-budget-tokens: {raw!r} is not a whole number (or 'none')")
    return int(raw)


def _ip_list_options(args: argparse.Namespace) -> dict[str, list[str] | None]:
    """`--ip-allow`/`--ip-deny` as tenant fields: a checked list, or None ('none' clears);
    options not given are left out."""
    fields: dict[str, list[str] | None] = {}
    for option, field in (("--ip-allow", "ip_allow"), ("--ip-deny", "ip_deny")):
        raw = getattr(args, field, None)
        if raw is not None:
            cidrs = None if raw.strip().lower() in _CLEAR else cidrs_option(raw, option)
            fields[field] = list(cidrs) if cidrs else None
    return fields


def run_tenants_set(args: argparse.Namespace) -> int:
    """`sluice tenants set NAME [--monthly-budget-usd X] [--monthly-budget-tokens N]
    [--max-queued N] [--weight W] [--store-content yes|no]
    [--alert-thresholds 50,80,100] [--daily-spend-alert USD]
    [--ip-allow CIDRS] [--ip-deny CIDRS]`."""
    changes: dict[str, Any] = {}
    usd, tokens = _usd_option(args.monthly_budget_usd), _tokens_option(args.monthly_budget_tokens)
    if usd is not ...:
        changes["monthly_budget_usd"] = usd
    if tokens is not ...:
        changes["monthly_budget_tokens"] = tokens
    queued = _count_option(getattr(args, "max_queued", None), "--max-queued")
    if queued is not ...:
        changes["max_queued_requests"] = queued
    weight = getattr(args, "weight", None)
    if weight is not None:
        if not weight > 0:
            raise ConfigError(f"--weight: {weight} is not a positive number")
        changes["weight"] = weight
    if args.store_content is not None:
        changes["store_content"] = args.store_content == "yes"
    alerts = alert_changes(args)
    ip_lists = _ip_list_options(args)  # checked before anything is stored

    async def apply(engine: Any) -> Any:
        if alerts:
            rule = await set_tenant_alerts(engine, args.name, alerts)
            print(f"tenant {args.name}: budget alerts {rule_text(rule)}")
        if ip_lists:
            stored = await set_tenant_ip_lists(engine, args.name, ip_lists)
            lists = describe_ip_lists(stored.allow, stored.deny)
            print(f"tenant {args.name}: IP lists {'none' if lists == '-' else lists}")
        return await set_tenant(engine, args.name, **changes)

    tenant = with_engine(apply)
    budget = budget_text(tenant.monthly_budget_usd, tenant.monthly_budget_tokens)
    stored = "yes" if tenant.store_content else "no"
    cap = tenant.max_queued_requests if tenant.max_queued_requests is not None else "no cap"
    print(f"tenant {tenant.name}: budget {budget} per month, store content {stored}, "
          f"queued requests {cap}, weight {tenant.weight:g} "
          "(ingress instances and workers apply it within 30 s; `sluice tenants list` "
          "shows spend)")
    return 0


def run_tenants_list(args: argparse.Namespace) -> int:
    """`sluice tenants list`: settings and this month's spend of every tenant with a row."""
    period = month_of(datetime.now(UTC))

    async def load(engine: Any) -> tuple[Any, Any, Any, Any, dict[str, IpLists]]:
        return (await list_tenants(engine), await spend_accounts_of(engine, period),
                await alert_rules(engine), await last_alerts(engine),
                await tenant_ip_lists(engine))

    tenants, accounts, rules, fired, ip_lists = with_engine(load)
    table = Table("tenant", "budget / month", "spent USD", "held USD", "spent tokens",
                  "held tokens", "store content", "alerts", "last alert", "ip lists",
                  title=f"spend in {period:%Y-%m}")
    for tenant in tenants:
        account = accounts.get(f"tenant:{tenant.name}")
        table.add_row(
            tenant.name, budget_text(tenant.monthly_budget_usd, tenant.monthly_budget_tokens),
            str(account.spent_usd.normalize()) if account else "0",
            str(account.reserved_usd.normalize()) if account else "0",
            str(account.spent_tokens) if account else "0",
            str(account.reserved_tokens) if account else "0",
            "yes" if tenant.store_content else "no",
            describe_rule(rules.get(f"tenant:{tenant.name}")),
            last_fired_text(fired.get(f"tenant:{tenant.name}")),
            describe_ip_lists(*_allow_deny(ip_lists.get(tenant.name))),
        )
    console().print(table)
    if not tenants:
        print("no tenant has settings yet; give one a budget with "
              "`sluice tenants set NAME --monthly-budget-usd 100`")
    return 0



def _allow_deny(lists: IpLists | None) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    return (lists.allow, lists.deny) if lists is not None else (None, None)
