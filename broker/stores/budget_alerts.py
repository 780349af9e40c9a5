"""Budget alerts: the thresholds of tenants and keys, and the alerts already fired.

Firing happens in PostgreSQL, in the ledger's transaction (migrations 0021 and 0024): a
trigger on `spend_accounts` compares a scope's monthly spend with its thresholds whenever
it grows, and the ledger's `sluice_usage_add` adds new usage to the UTC day of its
`finished_at` and compares that day's spend with the daily amount. Each crossed
(scope, threshold, period, budget amount) is recorded once and queues a
`budget.threshold_crossed` webhook for every subscribed endpoint of the tenant: a budget
raised mid-month alerts again at its new amount. This module configures rules and reads
what fired; `crossed_thresholds` is the Python twin of the trigger's arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.errors import ConfigError
from broker.stores.database import database_errors
from broker.stores.tables import api_keys, budget_alert_rules, budget_alerts_fired

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class AlertRule:
    """When one scope alerts: percentages of its monthly USD budget, and USD per day."""

    scope: str
    tenant: str
    thresholds_pct: tuple[int, ...] = ()
    daily_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class FiredAlert:
    """One alert sent: which threshold of which scope, in which period, at what spend."""

    scope: str
    tenant: str
    threshold: str
    period: date
    spend_usd: Decimal
    budget_usd: Decimal
    fired_at: datetime


def parse_thresholds(raw: str) -> tuple[int, ...]:
    """`"50,80,100"` → (50, 80, 100): sorted, distinct whole percentages from 1 to 1000.

    An empty string or "none" clears them.

    Raises:
        ConfigError: a part is not a whole number in range.
    """
    if raw.strip().lower() in ("", "none", "off"):
        return ()
    values = set()
    for part in raw.split(","):
        part = part.strip().rstrip("%")
        if not part.isdigit() or not 1 <= int(part) <= 1000:
            raise ConfigError(f"alert threshold {part!r} is not a whole percentage from 1 "
                              "to 1000 (e.g. 50,80,100)")
        values.add(int(part))
    return tuple(sorted(values))


def crossed_thresholds(thresholds_pct: Iterable[int], spent: Decimal,
                       budget: Decimal | None) -> list[str]:
    """The thresholds (as "50%") that spend `spent` has reached on `budget`.

    Reached means spent >= budget * pct / 100 (exact decimal arithmetic). No budget, or
    a budget of 0, reaches none. SQL twin: `sluice_budget_alerts` (migration 0021).
    """
    if budget is None or budget <= 0:
        return []
    return [f"{pct}%" for pct in sorted(thresholds_pct) if spent * 100 >= budget * pct]


def tenant_scope(tenant: str) -> str:
    """The spend scope of a tenant."""
    return f"tenant:{tenant}"


def key_scope(key_id: str) -> str:
    """The spend scope of an API key."""
    return f"key:{key_id}"


async def set_alert_rule(
    engine: AsyncEngine, scope: str, tenant: str, *,
    thresholds_pct: Sequence[int] | None = _UNSET, daily_usd: Decimal | None = _UNSET,
) -> AlertRule:
    """Create or change the rule of `scope`; only the arguments given change.

    A rule left with neither thresholds nor a daily amount is deleted.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached.
    """
    changes: dict[str, Any] = {"tenant": tenant, "updated_at": func.now()}
    if thresholds_pct is not _UNSET:
        changes["thresholds_pct"] = list(thresholds_pct or ())
    if daily_usd is not _UNSET:
        changes["daily_usd"] = daily_usd
    statement = insert(budget_alert_rules).values(scope=scope, **changes)
    statement = statement.on_conflict_do_update(
        index_elements=[budget_alert_rules.c.scope], set_=changes)
    rules = budget_alert_rules.c
    with database_errors(engine):
        async with engine.begin() as connection:
            await connection.execute(statement)
            row = (await connection.execute(
                select(budget_alert_rules).where(rules.scope == scope))).one()
            rule = _rule(row)
            if not rule.thresholds_pct and rule.daily_usd is None:
                await connection.execute(delete(budget_alert_rules).where(rules.scope == scope))
    return rule


def _rule(row: Any) -> AlertRule:
    return AlertRule(row.scope, row.tenant, tuple(row.thresholds_pct), row.daily_usd)


async def alert_rules(engine: AsyncEngine, tenant: str | None = None) -> dict[str, AlertRule]:
    """Every rule (or those of `tenant`'s scopes), by scope."""
    statement = select(budget_alert_rules)
    if tenant is not None:
        statement = statement.where(budget_alert_rules.c.tenant == tenant)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return {row.scope: _rule(row) for row in rows}


async def fired_alerts(engine: AsyncEngine, tenant: str | None = None, *,
                       limit: int = 100) -> list[FiredAlert]:
    """The alerts fired (of `tenant`, or all), newest first."""
    fired = budget_alerts_fired.c
    statement = select(budget_alerts_fired).order_by(fired.fired_at.desc(), fired.id.desc())
    if tenant is not None:
        statement = statement.where(fired.tenant == tenant)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement.limit(limit))).all()
    return [FiredAlert(row.scope, row.tenant, row.threshold, row.period, row.spend_usd,
                       row.budget_usd, row.fired_at) for row in rows]


def describe_rule(rule: AlertRule | None) -> str:
    """`50,80,100% · $25/day`, or "-" without a rule."""
    if rule is None:
        return "-"
    parts = []
    if rule.thresholds_pct:
        parts.append(",".join(map(str, rule.thresholds_pct)) + "%")
    if rule.daily_usd is not None:
        parts.append(f"${_money(rule.daily_usd)}/day")
    return " · ".join(parts) or "-"


def describe_alert(alert: FiredAlert | None) -> str:
    """`80% at $4.01 (12-05 14:03)`, or "-" when nothing fired."""
    if alert is None:
        return "-"
    spend = Decimal(alert.spend_usd).quantize(Decimal("0.0001")).normalize()
    return f"{alert.threshold} at ${spend:f} ({alert.fired_at:%m-%d %H:%M})"


def _money(amount: Decimal) -> str:
    # Fixed point: Decimal("10.00").normalize() alone prints "1E+1".
    return f"{amount.normalize():f}"


def alert_json(alert: FiredAlert) -> dict[str, Any]:
    """A fired alert as the usage API shows it."""
    kind, _, name = alert.scope.partition(":")
    return {
        "scope": alert.scope, "tenant": alert.tenant, "key": name if kind == "key" else None,
        "threshold": alert.threshold,
        "period": (alert.period.isoformat() if alert.threshold == "daily"
                   else f"{alert.period:%Y-%m}"),
        "spend_usd": _money(alert.spend_usd), "budget_usd": _money(alert.budget_usd),
        "fired_at": alert.fired_at.isoformat(),
    }


def rule_json(rule: AlertRule) -> dict[str, Any]:
    """A rule as the usage and admin APIs show it."""
    return {
        "scope": rule.scope, "thresholds_pct": list(rule.thresholds_pct),
        "daily_usd": None if rule.daily_usd is None else _money(rule.daily_usd),
    }


async def alerts_section(engine: AsyncEngine, tenant: str) -> dict[str, Any]:
    """The `alerts` section of `GET /v1/usage`: `tenant`'s rules and its latest alerts."""
    rules = await alert_rules(engine, tenant)
    fired = await fired_alerts(engine, tenant, limit=50)
    return {"rules": [rule_json(rules[scope]) for scope in sorted(rules)],
            "fired": [alert_json(alert) for alert in fired]}


ALERT_FIELDS = ("alert_thresholds_pct", "daily_spend_alert_usd")


async def apply_alert_fields(engine: AsyncEngine, tenant: str, fields: dict[str, Any], *,
                             scope: str | None = None) -> None:
    """Take the alert fields of an admin API change out of `fields` and apply them to the
    rule of `scope` (default: the tenant's own; a key's scope for `PATCH
    /v1/admin/keys/{id}`). Null clears a field."""
    changes: dict[str, Any] = {}
    if "alert_thresholds_pct" in fields:
        changes["thresholds_pct"] = sorted(set(fields.pop("alert_thresholds_pct") or ()))
    if "daily_spend_alert_usd" in fields:
        changes["daily_usd"] = fields.pop("daily_spend_alert_usd")
    if changes:
        await set_alert_rule(engine, scope or tenant_scope(tenant), tenant, **changes)


def alert_fields(rule: AlertRule | None) -> dict[str, Any]:
    """A tenant's or key's alert settings as admin API fields."""
    return {
        "alert_thresholds_pct": list(rule.thresholds_pct) if rule else [],
        "daily_spend_alert_usd": (None if rule is None or rule.daily_usd is None
                                  else _money(rule.daily_usd)),
    }


def key_alert_fields(rule: AlertRule | None, last: FiredAlert | None) -> dict[str, Any]:
    """A key's alert settings and its latest alert (None if it never alerted), as the admin
    API's key bodies show them."""
    return alert_fields(rule) | {"last_alert": None if last is None else alert_json(last)}


async def set_key_alert_rule(engine: AsyncEngine, key_id: str,
                             changes: dict[str, Any]) -> AlertRule | None:
    """Apply `changes` to the rule of API key `key_id` (None: no such key)."""
    with database_errors(engine):
        async with engine.connect() as connection:
            tenant = (await connection.execute(
                select(api_keys.c.tenant).where(api_keys.c.id == key_id))).scalar()
    if tenant is None:
        return None
    return await set_alert_rule(engine, key_scope(key_id), tenant, **changes)


async def last_alerts(engine: AsyncEngine, tenant: str | None = None) -> dict[str, FiredAlert]:
    """The newest alert of every scope (of `tenant`, or all) that ever alerted, by scope
    (one index scan each)."""
    fired = budget_alerts_fired.c
    statement = (select(budget_alerts_fired).ext(distinct_on(fired.scope))
                 .order_by(fired.scope, fired.fired_at.desc(), fired.id.desc()))
    if tenant is not None:
        statement = statement.where(fired.tenant == tenant)
    with database_errors(engine):
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
    return {row.scope: FiredAlert(row.scope, row.tenant, row.threshold, row.period,
                                  row.spend_usd, row.budget_usd, row.fired_at) for row in rows}
