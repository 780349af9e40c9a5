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


def _brokers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in compose["services"].items()
            if name.startswith("kafka-")}


def test_kafka_is_a_cluster_that_survives_losing_a_broker(compose: dict[str, Any]) -> None:
    brokers = _brokers(compose)
    ids = {spec["environment"]["KAFKA_NODE_ID"] for spec in brokers.values()}
    assert ids == {1, 2, 3}
    for name, spec in brokers.items():
        env = spec["environment"]
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert sorted(voter.split("@")[1] for voter in voters) == sorted(
            f"{broker}:9093" for broker in brokers)
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3
        assert len(env["CLUSTER_ID"]) == 22  # a base64 UUID, as kafka-storage makes
    assert len({spec["environment"]["CLUSTER_ID"] for spec in brokers.values()}) == 1
    for spec in _sluice_services(compose).values():
        env = spec["environment"]
        assert env["SLUICE_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["SLUICE_TOPIC_MIN_INSYNC_REPLICAS"] == "2"
        assert env["SLUICE_KAFKA_ENGINE"] == "apache"
    # A stable reply topic per ingress replica (README: reply topics do not leak).
    assert compose["services"]["ingress"]["environment"]["SLUICE_INGRESS_ID"]


def test_every_process_of_the_design_runs(compose: dict[str, Any]) -> None:
    services = _sluice_services(compose)
    subcommands = {spec["command"][1] for spec in services.values()}
    assert {"migrate", "ingress", "worker", "ledger"} <= subcommands
    brokers = _brokers(compose)
    assert len(brokers) == 3
    for spec in brokers.values():
        assert spec["image"].startswith("apache/kafka:4.")
        assert "controller" in spec["environment"]["KAFKA_PROCESS_ROLES"]
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
        assert env["SLUICE_KAFKA_BOOTSTRAP"].split(",") == [
            f"{broker}:9092" for broker in _brokers(compose)]
        assert "@postgres:" in env["SLUICE_DATABASE_URL"]


def test_processes_start_after_migrations_and_workers_scale(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("ingress", "worker", "ledger"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        for broker in _brokers(compose):
            assert services[name]["depends_on"][broker]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_mounted_config_is_valid(compose: dict[str, Any]) -> None:
    mount = compose["services"]["ingress"]["volumes"][0]
    source, target = mount.split(":")[:2]
    assert target == compose["services"]["ingress"]["environment"]["SLUICE_CONFIG"]
    config = load_config(ROOT / source)
    assert config.models


def test_postgres_is_not_published_and_has_no_password_in_the_file(
    compose: dict[str, Any],
) -> None:
    postgres = compose["services"]["postgres"]
    assert "ports" not in postgres  # only the services on the compose network reach it
    required = "${SLUICE_POSTGRES_PASSWORD:?"
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith(required)
    for name, spec in compose["services"].items():
        url = (spec.get("environment") or {}).get("SLUICE_DATABASE_URL")
        if url is not None:
            assert required in url, name
