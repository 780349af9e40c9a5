"""`sluice keys …` and `sluice prices …`: manage API keys and the price catalog directly in
PostgreSQL (settings from the environment: `SLUICE_DATABASE_URL`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from broker.errors import ConfigError, InvalidRequest
from broker.settings import DatabaseSettings, KafkaSettings
from broker.signing import KEY_ID_HEADER, SIGNATURE_HEADER, key_signing_secret
from broker.stores.access_lists import checked_cidrs, describe_ip_lists
from broker.stores.budget_alerts import (
    AlertRule,
    FiredAlert,
    alert_rules,
    describe_alert,
    describe_rule,
    key_scope,
    last_alerts,
)
from broker.stores.database import create_engine
from broker.stores.keys import (
    ApiKeyRecord,
    KeyLimits,
    create_api_key,
    find_active_key,
    list_api_keys,
    revoke_api_key,
)
from broker.stores.prices import PriceSpec, list_prices, set_prices
from broker.stores.usage import parse_duration, parse_time

if TYPE_CHECKING:  # a handle passed to the stores; SQL is theirs alone
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


def console() -> Console:
    """A console for tables; piped output gets a wide one, so no id is cut to "…"."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=240)


def with_engine(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work` with an engine on `SLUICE_DATABASE_URL`, disposed afterwards."""

    async def main() -> T:
        engine = create_engine(DatabaseSettings())
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _money(raw: str | None, option: str) -> Decimal | None:
    if raw is None:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation as exc:
        raise ConfigError(f"{option}: {raw!r} is not a number") from exc
    if value < 0 or not value.is_finite():
        raise ConfigError(f"{option}: must be a non-negative amount")
    return value


def _expiry(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    duration = parse_duration(raw)
    if duration is not None:
        return datetime.now(UTC) + duration
    try:
        return parse_time(raw, param="expires")
    except InvalidRequest as exc:
        raise ConfigError(f"--expires: {exc}") from exc


def _names(raw: str | None) -> tuple[str, ...] | None:
    """`a, b,a` → ("a", "b"): a comma-separated list, in order, without repeats."""
    names = tuple(dict.fromkeys(name.strip() for name in (raw or "").split(",") if name.strip()))
    return names or None


def cidrs_option(raw: str | None, option: str) -> tuple[str, ...] | None:
    """`--ip-allow 10.0.0.0/8,192.0.2.1` → ("10.0.0.0/8", "192.0.2.1/32"); None for
    nothing given.

    Raises:
        ConfigError: naming the option and the entry that is not an address or CIDR.
    """
    try:
        cidrs = checked_cidrs(_names(raw), option.removeprefix("--").replace("-", "_"))
    except InvalidRequest as exc:
        raise ConfigError(f"{option}: {exc}") from exc
    return tuple(cidrs) if cidrs else None


def run_keys_create(args: argparse.Namespace) -> int:
    """`sluice keys create --tenant T […]`: print a new key once."""
    limits = KeyLimits(
        models=frozenset(m.strip() for m in args.models.split(",") if m.strip())
        if args.models else None,
        rpm=args.rpm, tpm=args.tpm,
        monthly_budget_usd=_money(args.monthly_budget_usd, "--monthly-budget-usd"),
        monthly_budget_tokens=args.monthly_budget_tokens,
        expires_at=_expiry(args.expires),
        guardrails=_names(args.guardrails),
        role=args.role,
        ip_allow=cidrs_option(args.ip_allow, "--ip-allow"),
        ip_deny=cidrs_option(args.ip_deny, "--ip-deny"),
    )
    secret, record = with_engine(
        lambda engine: create_api_key(engine, args.tenant, args.name, limits))
    print(secret)
    print(f"(key id {record.id}, tenant {record.tenant}, role {record.limits.role}; shown "
          "once, store it now)")
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    """`sluice keys list [--tenant T]`: keys by prefix (never their secrets), with their
    role, IP lists, budget alerts and latest alert."""

    async def load(engine: AsyncEngine) -> tuple[list[ApiKeyRecord], dict[str, AlertRule],
                                                  dict[str, FiredAlert]]:
        return (await list_api_keys(engine, args.tenant),
                await alert_rules(engine, args.tenant), await last_alerts(engine, args.tenant))

    keys, rules, fired = with_engine(load)
    table = Table("id", "tenant", "name", "prefix", "role", "models", "rpm", "tpm",
                  "budget/mo", "expires", "guardrails", "ip lists", "alerts", "last alert",
                  "status")
    for key in keys:
        limits = key.limits
        status = "revoked" if key.revoked_at else "active"
        if limits.expires_at and limits.expires_at <= datetime.now(UTC):
            status = "expired"
        table.add_row(
            key.id, key.tenant, key.name or "", key.prefix + "…", limits.role,
            ",".join(sorted(limits.models)) if limits.models is not None else "*",
            _text(limits.rpm), _text(limits.tpm),
            budget_text(limits.monthly_budget_usd, limits.monthly_budget_tokens),
            limits.expires_at.isoformat() if limits.expires_at else "",
            ",".join(limits.guardrails or ()),
            describe_ip_lists(limits.ip_allow, limits.ip_deny),
            describe_rule(rules.get(key_scope(key.id))),
            describe_alert(fired.get(key_scope(key.id))), status,
        )
    console().print(table)
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    """`sluice keys revoke ID`."""
    if not with_engine(lambda e: revoke_api_key(e, args.key_id)):
        raise ConfigError(f"no active key with id {args.key_id!r}")
    print(f"revoked {args.key_id} (edges may accept it for up to 30 s more: their key cache)")
    return 0


def run_keys_signing_secret(args: argparse.Namespace) -> int:
    """`sluice keys signing-secret ID`: what a Kafka-native client of the key signs with.

    Derived from SLUICE_KAFKA_SIGNING_KEY (broker/signing.py), so it needs that setting.
    """
    signing_key = KafkaSettings().kafka_signing_key
    if signing_key is None:
        raise ConfigError("SLUICE_KAFKA_SIGNING_KEY is not set: it is what the secret "
                          "derives from (the same as on ingress and workers)")
    record = with_engine(lambda e: find_active_key(e, args.key_id))
    if record is None:
        raise ConfigError(f"no active key with id {args.key_id!r}")
    print(key_signing_secret(signing_key, record.id))
    print(f"(key {record.id}, tenant {record.tenant}: send headers {KEY_ID_HEADER}: "
          f"{record.id} and {SIGNATURE_HEADER}: hex HMAC-SHA256 of the value with this "
          "secret)", file=sys.stderr)
    return 0


def run_prices_set(args: argparse.Namespace) -> int:
    """`sluice prices set MODEL --input X --output Y [--effective-from T]`."""
    when = parse_time(args.effective_from, param="effective-from") if args.effective_from \
        else datetime.now(UTC)
    try:
        spec = PriceSpec(
            model=args.model, deployment=args.deployment,
            input_usd_per_mtok=_money(args.input, "--input"),
            output_usd_per_mtok=_money(args.output, "--output"),
            cached_input_usd_per_mtok=_money(args.cached_input, "--cached-input"),
            cache_write_input_usd_per_mtok=_money(args.cache_write_input,
                                                  "--cache-write-input"),
            cache_write_1h_input_usd_per_mtok=_money(args.cache_write_1h_input,
                                                     "--cache-write-1h-input"),
            batch_input_usd_per_mtok=_money(args.batch_input, "--batch-input"),
            batch_output_usd_per_mtok=_money(args.batch_output, "--batch-output"),
            effective_from=when,
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid price: {exc}") from exc
    [price] = with_engine(lambda e: set_prices(e, [spec]))
    where = f" on {price.deployment}" if price.deployment else ""
    print(f"price {price.id}: {price.model}{where} from {price.effective_from.isoformat()}: "
          f"in {price.input_usd_per_mtok} / out {price.output_usd_per_mtok} USD per Mtok")
    return 0


def run_prices_list(args: argparse.Namespace) -> int:
    """`sluice prices list [--model M]`."""
    prices = with_engine(lambda e: list_prices(e, args.model))
    table = Table("id", "model", "deployment", "input", "output", "cached input",
                  "cache write", "batch in", "batch out", "currency", "effective from",
                  title="USD per million tokens (cache write: 1.25 x input, batch: half, "
                        "where blank)")
    for price in prices:
        table.add_row(str(price.id), price.model, price.deployment or "*",
                      str(price.input_usd_per_mtok), str(price.output_usd_per_mtok),
                      _text(price.cached_input_usd_per_mtok),
                      _text(price.cache_write_input_usd_per_mtok),
                      _text(price.batch_input_usd_per_mtok),
                      _text(price.batch_output_usd_per_mtok), price.currency,
                      price.effective_from.isoformat())
    console().print(table)
    return 0


def budget_text(usd: Decimal | None, tokens: int | None) -> str:
    """A monthly budget for people: "$12.5 and 90000 tokens", or "unlimited"."""
    parts = ([f"${usd.normalize():f}"] if usd is not None else []) + (
        [f"{tokens} tokens"] if tokens is not None else [])
    return " and ".join(parts) or "unlimited"


def _text(value: object) -> str:
    return "" if value is None else str(value)
