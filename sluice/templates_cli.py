"""`sluice templates create|list|show`: prompt templates in PostgreSQL (README "Prompt
templates"). Like `sluice keys`, it works on the database directly (`SLUICE_DATABASE_URL`);
the admin API offers the same over HTTP."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from broker.errors import ConfigError, NotFound

Handler = Callable[[argparse.Namespace], int]


def add_template_commands(commands: Any, handler: Callable[[str, str], Handler]) -> None:
    """Add `sluice templates …` to the top-level subparsers `commands`."""
    templates = commands.add_parser("templates", help="versioned prompt templates")
    sub = templates.add_subparsers(dest="templates_command", required=True)
    create = sub.add_parser("create", help="create a template, or its next version")
    create.add_argument("name")
    create.add_argument("--file", type=Path, required=True,
                        help="YAML (or JSON) with messages, parameters and variables")
    create.set_defaults(handler=handler("sluice.templates_cli", "run_create"))
    listing = sub.add_parser("list", help="the latest version of every template")
    listing.set_defaults(handler=handler("sluice.templates_cli", "run_list"))
    show = sub.add_parser("show", help="print a template as JSON")
    show.add_argument("name")
    show.add_argument("--version", type=int, default=None, help="default: the latest")
    show.set_defaults(handler=handler("sluice.templates_cli", "run_show"))


def read_spec(name: str, path: Path) -> dict[str, Any]:
    """The template file's contents, named `name` (the file's own `name` must agree)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a template file holds a mapping (messages, parameters, "
                          "variables)")
    if data.setdefault("name", name) != name:
        raise ConfigError(f"{path} names the template {data['name']!r}, not {name!r}")
    return data


def run_create(args: argparse.Namespace) -> int:
    """`sluice templates create NAME --file t.yaml`."""
    from broker.stores.templates import create_template
    from ingress.templates import new_template
    from sluice.keys_cli import with_engine

    spec = new_template(read_spec(args.name, args.file))
    template = with_engine(lambda engine: create_template(engine, spec))
    print(f"template {template.name} version {template.version} created")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """`sluice templates list`: name, latest version, model, variables (`*`: required),
    and whether callers need approval (the latest version's flag decides for all)."""
    from broker.stores.templates import list_templates
    from sluice.keys_cli import with_engine

    for template in with_engine(list_templates):
        variables = ", ".join(v.name + ("*" if v.required else "") for v in template.variables)
        approval = "requires approval" if template.requires_approval else "open"
        print(f"{template.name}\tv{template.version}\t{template.parameters.get('model')}"
              f"\t{variables}\t{approval}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """`sluice templates show NAME [--version N]`."""
    from broker.stores.templates import get_template
    from sluice.keys_cli import with_engine

    template = with_engine(lambda engine: get_template(engine, args.name, args.version))
    if template is None:
        raise NotFound(f"No template '{args.name}'"
                       + (f" version {args.version}." if args.version else "."))
    print(json.dumps(template.body(), indent=2))
    return 0
