"""`sluice access request|approve|deny|list`: access approval from the operator's shell.

The CLI talks to PostgreSQL (`SLUICE_DATABASE_URL`) and acts as the admin. Ingress
instances cache approvals for a few seconds (`broker.access`), so a decision made here
reaches callers within that time; the admin API (`/v1/admin/access`) takes effect at once
on the instance that served it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def add_access_commands(commands: Any, handler: Callable[[str, str], Handler]) -> None:
    """Add `sluice access …` (definitions only; handlers are imported when run)."""
    access = commands.add_parser("access", help="access approval for models and templates")
    access_commands = access.add_subparsers(dest="access_command", required=True)
    request = access_commands.add_parser(
        "request", help="ask for access to model:<name> or template:<name>")
    request.add_argument("resource", help="model:<name> or template:<name>")
    request.add_argument("--tenant", required=True)
    request.add_argument("--key", default=None, help="one key id (default: the whole tenant)")
    request.add_argument("--reason", required=True)
    request.set_defaults(handler=handler("sluice.access_cli", "run_access_request"))
    for verb in ("approve", "deny"):
        decide = access_commands.add_parser(verb, help=f"{verb} an access request by id")
        decide.add_argument("id")
        decide.add_argument("--reason", default="")
        decide.set_defaults(handler=handler("sluice.access_cli", f"run_access_{verb}"))
    listing = access_commands.add_parser("list", help="access requests, newest first")
    listing.add_argument("--pending", action="store_true", help="only those awaiting a decision")
    listing.add_argument("--tenant", default=None)
    listing.add_argument("--audit", action="store_true",
                         help="print the audit trail instead (every request and decision)")
    listing.set_defaults(handler=handler("sluice.access_cli", "run_access_list"))


def _print_grant(grant: Any) -> None:
    who = f"key {grant.key_id}" if grant.key_id else "whole tenant"
    print(f"{grant.id} {grant.status} {grant.resource} tenant={grant.tenant} ({who})")


def run_access_request(args: argparse.Namespace) -> int:
    """`sluice access request RESOURCE --tenant T [--key K] --reason R`.

    Unlike the HTTP routes, the operator may ask for a template that does not exist yet
    (approve first, publish later); it is said on stderr in case the name is a typo."""
    from broker.access import ADMIN_ACTOR, parse_resource
    from broker.stores.access import AccessStore
    from broker.stores.templates import get_template
    from sluice.keys_cli import with_engine

    kind, name = parse_resource(args.resource)

    async def ask(engine: Any) -> tuple[Any, bool]:
        exists = kind != "template" or await get_template(engine, name) is not None
        grant = await AccessStore(engine).request(
            args.tenant, args.resource, key_id=args.key or "", reason=args.reason,
            actor=ADMIN_ACTOR)
        return grant, exists

    grant, exists = with_engine(ask)
    _print_grant(grant)
    if not exists:
        print(f"note: no template '{name}' exists yet", file=sys.stderr)
    return 0


def _decide(args: argparse.Namespace, action: Any) -> int:
    from broker.access import ADMIN_ACTOR
    from broker.stores.access import AccessStore
    from sluice.keys_cli import with_engine

    grant = with_engine(lambda engine: AccessStore(engine).decide(
        args.id, action, actor=ADMIN_ACTOR, reason=args.reason))
    _print_grant(grant)
    return 0


def run_access_approve(args: argparse.Namespace) -> int:
    """`sluice access approve ID [--reason R]`."""
    return _decide(args, "approved")


def run_access_deny(args: argparse.Namespace) -> int:
    """`sluice access deny ID [--reason R]`."""
    return _decide(args, "denied")


def run_access_list(args: argparse.Namespace) -> int:
    """`sluice access list [--pending] [--tenant T] [--audit]`."""
    from rich.table import Table

    from broker.stores.access import AccessStore
    from sluice.keys_cli import console, with_engine

    if args.audit:
        entries = with_engine(lambda engine: AccessStore(engine).audit(tenant=args.tenant))
        audit = Table("at", "request", "tenant", "key", "resource", "action", "by", "reason",
                      title="access audit")
        for entry in entries:
            audit.add_row(f"{entry.at:%Y-%m-%d %H:%M:%S}", entry.grant_id, entry.tenant,
                          entry.key_id or "-", entry.resource, entry.action, entry.actor,
                          entry.reason)
        console().print(audit)
        return 0
    grants = with_engine(lambda engine: AccessStore(engine).grants(
        tenant=args.tenant, pending=args.pending))
    table = Table("id", "tenant", "key", "resource", "status", "reason", "requested by",
                  "decided by", title="access requests")
    for grant in grants:
        table.add_row(grant.id, grant.tenant, grant.key_id or "(tenant)", grant.resource,
                      grant.status, grant.reason, grant.requested_by, grant.decided_by or "-")
    console().print(table)
    if not grants:
        print("no access requests" + (" awaiting a decision" if args.pending else ""))
    return 0
