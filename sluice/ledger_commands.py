"""The command tree of `sluice keys`, `tenants`, `prices`, `usage` and `ledger …`.

Definitions only (argparse), so `sluice --help` stays fast: the handlers live in
`sluice.keys_cli` and `sluice.usage_cli` and are imported when a command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]
HandlerFactory = Callable[[str, str], Handler]


def add_ledger_commands(commands: Any, ledger: argparse.ArgumentParser,
                        handler: HandlerFactory) -> None:
    """Add keys, tenants, prices, usage and `ledger reconcile` to the `sluice` parser.

    Args:
        commands: the top-level subparsers action.
        ledger: the `sluice ledger` parser (which runs the ledger without a subcommand).
        handler: `handler(module, function)` importing the implementation lazily.
    """
    keys = commands.add_parser("keys", help="API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an API key (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default=None)
    create.add_argument("--models", default=None, help="comma-separated models it may call")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    create.add_argument("--monthly-budget-usd", default=None, help="USD per calendar month")
    create.add_argument("--monthly-budget-tokens", type=int, default=None,
                        help="tokens per calendar month")
    create.add_argument("--expires", default=None, help="ISO time, or a duration like 30d")
    create.add_argument("--guardrails", default=None,
                        help="comma-separated guardrail policies its requests pass (after "
                             "their model's own)")
    create.add_argument("--role", default="member",
                        choices=["admin", "tenant_admin", "member", "analyst"],
                        help="what the key may do (README \"Identity and roles\")")
    create.add_argument("--ip-allow", default=None,
                        help="comma-separated CIDRs the key may be used from")
    create.add_argument("--ip-deny", default=None,
                        help="comma-separated CIDRs the key may not be used from")
    create.set_defaults(handler=handler("sluice.keys_cli", "run_keys_create"))
    listing = key_commands.add_parser(
        "list", help="list API keys (prefix, never the secret), roles, IP lists and alerts")
    listing.add_argument("--tenant", default=None)
    listing.set_defaults(handler=handler("sluice.keys_cli", "run_keys_list"))
    revoke = key_commands.add_parser("revoke", help="revoke an API key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=handler("sluice.keys_cli", "run_keys_revoke"))
    signing = key_commands.add_parser(
        "signing-secret", help="print the secret a Kafka-native client of a key signs with")
    signing.add_argument("key_id")
    signing.set_defaults(handler=handler("sluice.keys_cli", "run_keys_signing_secret"))
    key_alerts = key_commands.add_parser("alerts", help="budget alerts of an API key")
    key_alerts.add_argument("key_id")
    _add_alert_options(key_alerts, "key's")
    key_alerts.set_defaults(handler=handler("sluice.alerts_cli", "run_keys_alerts"))

    tenants = commands.add_parser("tenants", help="tenant budgets and content storage")
    tenant_commands = tenants.add_subparsers(dest="tenants_command", required=True)
    tenant_set = tenant_commands.add_parser("set", help="create or change a tenant")
    tenant_set.add_argument("name")
    tenant_set.add_argument("--monthly-budget-usd", default=None,
                            help="USD per calendar month ('none' removes the budget)")
    tenant_set.add_argument("--monthly-budget-tokens", default=None,
                            help="tokens per calendar month ('none' removes the budget)")
    tenant_set.add_argument("--max-queued", default=None,
                            help="requests accepted and unfinished at once; more get 429 "
                                 "queue_full ('none' removes the cap)")
    tenant_set.add_argument("--weight", type=float, default=None,
                            help="fair share relative to other tenants (default 1): twice "
                                 "the turns and worker slots at 2")
    tenant_set.add_argument("--store-content", choices=("yes", "no"), default=None,
                            help="keep prompt and completion text (default no)")
    _add_alert_options(tenant_set, "tenant's")
    tenant_set.add_argument("--ip-allow", default=None,
                            help="comma-separated CIDRs the tenant's callers may come from "
                                 "('none' removes the list)")
    tenant_set.add_argument("--ip-deny", default=None,
                            help="comma-separated CIDRs the tenant's callers may not come "
                                 "from ('none' removes the list)")
    tenant_set.set_defaults(handler=handler("sluice.tenants_cli", "run_tenants_set"))
    tenant_list = tenant_commands.add_parser(
        "list", help="tenants: this month's spend, budget alerts and IP lists")
    tenant_list.set_defaults(handler=handler("sluice.tenants_cli", "run_tenants_list"))

    prices = commands.add_parser("prices", help="the price catalog (USD per million tokens)")
    price_commands = prices.add_subparsers(dest="prices_command", required=True)
    price_set = price_commands.add_parser("set", help="add a price, effective from a date")
    price_set.add_argument("model")
    price_set.add_argument("--deployment", default=None, help="only this deployment")
    price_set.add_argument("--input", required=True, help="USD per million input tokens")
    price_set.add_argument("--output", required=True, help="USD per million output tokens")
    price_set.add_argument("--cached-input", default=None, help="USD per million cached")
    price_set.add_argument("--cache-write-input", default=None,
                           help="USD per million written to the prompt cache (default "
                                "1.25 x input)")
    price_set.add_argument("--cache-write-1h-input", default=None,
                           help="USD per million written to the one-hour prompt cache "
                                "(default 2 x input)")
    price_set.add_argument("--batch-input", default=None,
                           help="USD per million input through the provider's batch API "
                                "(default half of --input)")
    price_set.add_argument("--batch-output", default=None,
                           help="USD per million output through the provider's batch API "
                                "(default half of --output)")
    price_set.add_argument("--effective-from", default=None, help="ISO time (default: now)")
    price_set.set_defaults(handler=handler("sluice.keys_cli", "run_prices_set"))
    price_list = price_commands.add_parser("list", help="list prices, all periods")
    price_list.add_argument("--model", default=None)
    price_list.set_defaults(handler=handler("sluice.keys_cli", "run_prices_list"))

    usage = commands.add_parser("usage", help="usage and spend from the ledger")
    usage.add_argument("--by", default="model,day", help="tenant,key,model,provider,"
                       "deployment,day|hour (default model,day)")
    usage.add_argument("--since", default="7d", help="7d, 12h, or an ISO time (default 7d)")
    usage.add_argument("--until", default=None, help="ISO time (default: now)")
    usage.add_argument("--tenant", default=None)
    usage.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    usage.set_defaults(handler=handler("sluice.usage_cli", "run_usage"))

    ledger_commands = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND")
    reconcile = ledger_commands.add_parser(
        "reconcile", help="compare the usage topic with the ledger's rows"
    )
    reconcile.add_argument("--since", default=None,
                           help="7d, 12h or an ISO time (default: the topic's beginning)")
    reconcile.set_defaults(handler=handler("sluice.usage_cli", "run_reconcile"))


def _add_alert_options(parser: argparse.ArgumentParser, whose: str) -> None:
    parser.add_argument("--alert-thresholds", default=None,
                        help=f"percentages of the {whose} monthly USD budget that send a "
                             "budget.threshold_crossed webhook, once per month each "
                             "(e.g. 50,80,100; 'none' removes them)")
    parser.add_argument("--daily-spend-alert", default=None,
                        help="USD spent in one UTC day that sends the webhook, once a day "
                             "('none' removes it)")
