"""compose.yaml cannot run here (no Docker engine), so its shape is checked by parsing it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import load_config
from broker.settings import (
    AppSettings,
    DatabaseSettings,
    IngressSettings,
    KafkaSettings,
    LedgerSettings,
    WorkerSettings,
)
from sluice.cli import build_parser

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def _sluice_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in compose["services"].items()
        if spec.get("command", [None])[0] == "sluice"
    }


def test_every_process_of_the_design_runs(compose: dict[str, Any]) -> None:
    services = _sluice_services(compose)
    subcommands = {spec["command"][1] for spec in services.values()}
    assert {"migrate", "ingress", "worker", "ledger"} <= subcommands
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert compose["services"]["postgres"]["image"].startswith("postgres")


def test_every_command_is_a_real_sluice_subcommand(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name, spec in _sluice_services(compose).items():
        args = parser.parse_args(spec["command"][1:])
        assert callable(args.handler), name


def test_environment_uses_settings_names(compose: dict[str, Any]) -> None:
    known = {
        f"SLUICE_{field.upper()}"
        for settings in (
            KafkaSettings,
            DatabaseSettings,
            IngressSettings,
            WorkerSettings,
            LedgerSettings,
            AppSettings,
        )
        for field in settings.model_fields
    }
    for name, spec in _sluice_services(compose).items():
        env = spec["environment"]
        sluice_vars = {key for key in env if key.startswith("SLUICE_")}
        assert sluice_vars <= known, f"{name}: unknown {sluice_vars - known}"
        assert {"SLUICE_KAFKA_BOOTSTRAP", "SLUICE_DATABASE_URL", "SLUICE_CONFIG"} <= sluice_vars
        assert env["SLUICE_KAFKA_BOOTSTRAP"].startswith("kafka:")
        assert "@postgres:" in env["SLUICE_DATABASE_URL"]


def test_processes_start_after_migrations_and_workers_scale(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("ingress", "worker", "ledger"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_mounted_config_is_valid(compose: dict[str, Any]) -> None:
    mount = compose["services"]["ingress"]["volumes"][0]
    source, target = mount.split(":")[:2]
    assert target == compose["services"]["ingress"]["environment"]["SLUICE_CONFIG"]
    config = load_config(ROOT / source)
    assert config.models
