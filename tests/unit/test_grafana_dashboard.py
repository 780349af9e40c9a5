"""The Grafana dashboard is valid, and reads only metrics that `broker.metrics` defines.

A metric renamed in `broker/metrics/instruments.py` without the dashboard would leave its
panels silently empty; this test fails instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from broker.metrics import instruments
from broker.metrics.instruments import METRIC_NAMES

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "sluicegate.json"
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                       "and", "or", "unless", "offset", "le", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, labels and ranges left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # groupings
    names = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[match.end():].lstrip()
        if following.startswith("(") or match.group().lower() in _KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(match.group())
    return names


def _series(name: str) -> str:
    """The metric a series belongs to (a histogram's `_bucket`, `_sum`, `_count`)."""
    for suffix in _HISTOGRAM_SERIES:
        if name.endswith(suffix) and name.removesuffix(suffix) in METRIC_NAMES:
            return name.removesuffix(suffix)
    return name


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            # `label_values(metric, label)`: the series is the first argument.
            labels = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            found.append(labels.group(1) if labels else query)
    return found


def test_the_extractor_finds_series_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(foo_seconds_bucket{model=~"$m",'
            'lane="batch"}[$__rate_interval]))) / on (model) bar_total offset 5m')
    assert metric_names(expr) == {"foo_seconds_bucket", "bar_total"}
    assert _expressions({"panels": [], "templating": {"list": [
        {"type": "query", "query": {"query": "label_values(sluice_requests_total, model)"}}]}}
    ) == ["sluice_requests_total"]


def test_the_list_of_names_is_every_instrument_defined() -> None:
    defined = set()
    for value in vars(instruments).values():
        if isinstance(value, Counter | Gauge | Histogram):
            family = next(iter(value.describe()))
            defined.add(f"{family.name}_total" if family.type == "counter" else family.name)
    assert defined == METRIC_NAMES


def test_every_panel_reads_only_defined_metrics_and_every_metric_is_shown() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = set()
    for expr in _expressions(dashboard):
        used |= {_series(name) for name in metric_names(expr)}
    assert used - METRIC_NAMES == set(), "the dashboard reads metrics nobody defines"
    assert METRIC_NAMES - used == set(), "metrics no panel shows"


def test_the_dashboard_is_a_grafana_10_dashboard_over_a_prometheus_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36  # Grafana 10.0 writes 38; 9.x wrote up to 37
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("throughput", "latency", "queue depth", "budget", "breaker", "spend",
                  "tokens", "dead letters", "webhook", "ledger lag"):
        assert topic in titles, topic
