"""compose.yaml cannot run here (no Docker engine), so its shape is checked by parsing it."""

from __future__ import annotations

import re
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
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"SASL_PLAINTEXT://{name}:9092"
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


KAFKA_SERVICES = ("ingress", "worker", "ledger", "deliver")


def _acl_lines(compose: dict[str, Any]) -> list[str]:
    script = compose["services"]["acls"]["command"][-1]
    return [line.strip() for line in script.splitlines() if line.strip().startswith("acl ")]


def _granted(compose: dict[str, Any], user: str, operation: str, topic: str) -> bool:
    """Whether an ACL line lets `user` do `operation` on `topic` (literal or by prefix)."""
    for line in _acl_lines(compose):
        words = line.split()
        if words[1] != user or f"--operation {operation}" not in line:
            continue
        named = [words[i + 1] for i, word in enumerate(words) if word == "--topic"]
        prefixed = "--resource-pattern-type prefixed" in line
        if any(topic.startswith(name) if prefixed else topic == name for name in named):
            return True
    return False


def test_brokers_require_sasl_and_deny_by_default(compose: dict[str, Any]) -> None:
    for name, spec in _brokers(compose).items():
        env = spec["environment"]
        assert env["KAFKA_LISTENERS"].startswith("SASL_PLAINTEXT://"), name
        assert "PLAINTEXT://" not in env["KAFKA_LISTENERS"].replace("SASL_PLAINTEXT://", "")
        assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-256"
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert set(env["KAFKA_SUPER_USERS"].split(";")) == {"User:broker", "User:admin"}
        # Each service principal is a SCRAM user, created when storage is formatted.
        users = re.findall(r"name=([a-z]+),password=\$\{SLUICE_KAFKA_[A-Z]+_PASSWORD:\?",
                           env["SCRAM_USERS"])
        assert set(users) == {"broker", "admin", *KAFKA_SERVICES}
        assert "$$SCRAM_USERS" in spec["command"][-1]


def test_every_kafka_client_logs_in_as_its_own_principal(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in KAFKA_SERVICES:
        env = services[name]["environment"]
        settings = KafkaSettings(**{key.removeprefix("SLUICE_").lower(): value
                                    for key, value in env.items()
                                    if key.startswith("SLUICE_KAFKA_SASL_")
                                    or key == "SLUICE_KAFKA_SECURITY_PROTOCOL"})
        assert settings.kafka_security_protocol == "SASL_PLAINTEXT", name
        assert settings.kafka_sasl_mechanism == "SCRAM-SHA-256", name
        assert settings.kafka_sasl_username == name
        assert env["SLUICE_KAFKA_SASL_PASSWORD"].startswith(
            f"${{SLUICE_KAFKA_{name.upper()}_PASSWORD:?"), name
        # Requests are signed by ingress and the batch launcher, verified by workers.
        assert env["SLUICE_KAFKA_SIGNING_KEY"].startswith("${SLUICE_KAFKA_SIGNING_KEY:?")
        assert "SLUICE_KAFKA_TRUST_UNSIGNED" not in env
        assert services[name]["depends_on"]["acls"]["condition"] == (
            "service_completed_successfully")


def test_acls_grant_each_principal_only_its_topics(compose: dict[str, Any]) -> None:
    requests, results, usage = "sluice.requests.gpt-4o", "sluice.results", "sluice.usage"
    replies, native = "sluice.replies.ingress-1", "sluice.tenant.billing.replies"
    expected = {
        # (user, operation, topic): allowed?
        ("ingress", "Write", requests): True,
        ("ingress", "Read", replies): True,
        ("ingress", "Write", results): False,
        ("ingress", "Read", requests): False,
        ("worker", "Read", requests): True,
        ("worker", "Write", results): True,
        ("worker", "Write", usage): True,
        ("worker", "Write", "sluice.dead-letter"): True,
        ("worker", "Write", replies): True,
        ("worker", "Write", native): True,
        ("worker", "Read", results): False,
        ("ledger", "Read", results): True,
        ("ledger", "Read", usage): True,
        ("ledger", "Read", requests): True,
        ("ledger", "Write", results): False,
        ("ledger", "Write", usage): False,
        ("deliver", "Read", results): True,
        ("deliver", "Write", requests): False,
        ("deliver", "Read", usage): False,
    }
    found = {case: _granted(compose, *case) for case in expected}
    assert found == expected
    for user in KAFKA_SERVICES:  # nobody but the services may forge results or usage
        assert not _granted(compose, user, "Write", "sluice.results") or user == "worker"
    deps = compose["services"]["acls"]["depends_on"]
    assert {name for name, dep in deps.items()
            if dep["condition"] == "service_healthy"} == set(_brokers(compose))


ONE_SHOT = ("migrate", "mock-provider")  # ends at once, or a test double with no /readyz


def _served_port(spec: dict[str, Any]) -> int:
    """The port whose /readyz a service answers, read from its command and environment."""
    args = build_parser().parse_args(spec["command"][1:])
    if args.command == "ingress":
        port = args.port or spec["environment"].get("SLUICE_PORT")
    else:
        port = args.ops_port or spec["environment"].get("SLUICE_OPS_PORT")
    assert port is not None, f"{args.command} serves no operations port"
    return int(port)


def test_every_long_running_service_is_health_checked_on_its_readyz(
        compose: dict[str, Any]) -> None:
    checked = {name: spec for name, spec in _sluice_services(compose).items()
               if name not in ONE_SHOT}
    assert set(checked) >= set(KAFKA_SERVICES)
    for name, spec in checked.items():
        test = spec["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        urls = re.findall(r"urlopen\('([^']+)'", test[3])
        assert urls == [f"http://127.0.0.1:{_served_port(spec)}/readyz"], name
        assert "timeout=" in test[3], name  # a hung process fails the check, not hangs it
        # The ops port listens on loopback by default, which is where the check runs.
        assert spec["environment"].get("SLUICE_OPS_HOST", "127.0.0.1") in (
            "127.0.0.1", "0.0.0.0"), name
