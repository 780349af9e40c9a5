"""deploy/kubernetes cannot be applied here (no cluster), so its shape is checked by parsing
it: probes on the ports the processes really serve, KEDA on the workers' real groups, no
secret values in the files."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import load_config
from broker.settings import AppSettings
from schemas import Lane, Topics
from sluice.cli import build_parser
from workers.inference import InferencePool

ROOT = Path(__file__).parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
PROCESSES = ("ingress", "worker", "ledger", "deliver")


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents
            if doc["kind"] == kind and "metadata" in doc}


def _shared_env(documents: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = _of_kind(documents, "ConfigMap")["sluice-env"]["data"]
    return data


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env(container: dict[str, Any], shared: dict[str, str]) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "sluice-env"
        env.update(shared)
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return env


def _served_port(container: dict[str, Any], shared: dict[str, str]) -> int:
    """The port whose /livez and /readyz the container's process answers."""
    args = build_parser().parse_args(container["args"][1:])
    env = _env(container, shared)
    if args.command == "ingress":
        return int(args.port or env["SLUICE_PORT"])
    port = args.ops_port or env.get("SLUICE_OPS_PORT")
    assert port is not None, f"{args.command} serves no operations port"
    # Probes come from the kubelet, over the pod's address: loopback would refuse them.
    assert AppSettings(ops_host=env["SLUICE_OPS_HOST"]).ops_host == "0.0.0.0"
    return int(port)


def _probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    return int(named[port])


def test_the_manifests_hold_every_kind_a_deployment_needs(
        documents: list[dict[str, Any]]) -> None:
    kinds = {doc["kind"] for doc in documents}
    assert {"Deployment", "Service", "ConfigMap", "Job", "ScaledObject",
            "TriggerAuthentication"} <= kinds
    assert set(_of_kind(documents, "Deployment")) == {f"sluice-{p}" for p in PROCESSES}
    service = _of_kind(documents, "Service")["sluice-ingress"]
    ingress = _of_kind(documents, "Deployment")["sluice-ingress"]
    assert service["spec"]["selector"].items() <= (
        ingress["spec"]["template"]["metadata"]["labels"].items())
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def test_every_container_runs_a_real_command_probed_where_it_listens(
        documents: list[dict[str, Any]]) -> None:
    shared = _shared_env(documents)
    for name, deployment in _of_kind(documents, "Deployment").items():
        container = _container(deployment)
        assert container["args"][0] == "sluice"
        assert container["args"][1] == name.removeprefix("sluice-")
        port = _served_port(container, shared)
        liveness, readiness = container["livenessProbe"], container["readinessProbe"]
        assert liveness["httpGet"]["path"] == "/livez", name
        assert readiness["httpGet"]["path"] == "/readyz", name
        assert _probe_port(container, liveness) == port, name
        assert _probe_port(container, readiness) == port, name
        if "startupProbe" in container:
            assert _probe_port(container, container["startupProbe"]) == port, name
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
        assert resources["limits"]["memory"], name


def test_the_migration_job_runs_sluice_migrate(documents: list[dict[str, Any]]) -> None:
    job = _of_kind(documents, "Job")["sluice-migrate"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"][1:])
    assert args.command == "migrate" and callable(args.handler)


def test_config_is_mounted_where_sluice_config_points(documents: list[dict[str, Any]],
                                                      tmp_path: Path) -> None:
    shared = _shared_env(documents)
    embedded = _of_kind(documents, "ConfigMap")["sluice-config"]["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(embedded)
    config = load_config(tmp_path / "config.yaml")
    assert list(config.models) == list(load_config(ROOT / "deploy" / "config.yaml").models)
    for deployment in _of_kind(documents, "Deployment").values():
        container = _container(deployment)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "sluice-config"
        assert f"{mounts['config']}/config.yaml" == shared["SLUICE_CONFIG"]


SECRET_VARIABLES = {"SLUICE_DATABASE_URL", "SLUICE_KAFKA_SASL_PASSWORD",
                    "SLUICE_KAFKA_SIGNING_KEY", "SLUICE_ADMIN_KEY", "OPENAI_API_KEY",
                    "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY"}


def test_secrets_come_only_by_reference(documents: list[dict[str, Any]]) -> None:
    assert "Secret" not in {doc["kind"] for doc in documents}
    assert set(_shared_env(documents)).isdisjoint(SECRET_VARIABLES)
    containers = [_container(d) for d in _of_kind(documents, "Deployment").values()]
    containers += [_of_kind(documents, "Job")["sluice-migrate"]
                   ["spec"]["template"]["spec"]["containers"][0]]
    for container in containers:
        for variable in container.get("env", []):
            if variable["name"] in SECRET_VARIABLES:
                assert "value" not in variable, variable["name"]
                assert variable["valueFrom"]["secretKeyRef"]["name"] == "sluice-secrets"
        names = {v["name"] for v in container.get("env", [])}
        assert "SLUICE_DATABASE_URL" in names
    for workload in ("worker", "ingress", "ledger", "deliver"):
        env = _env(_container(_of_kind(documents, "Deployment")[f"sluice-{workload}"]), {})
        assert env["SLUICE_KAFKA_SASL_USERNAME"] == workload  # its own principal
    auth = _of_kind(documents, "TriggerAuthentication")["sluice-kafka-lag"]
    assert all("key" in ref and "value" not in ref for ref in auth["spec"]["secretTargetRef"])


def test_keda_scales_workers_on_their_real_consumer_groups(
        documents: list[dict[str, Any]]) -> None:
    # The pool names each lane's group with `Topics.worker_group` (read from its source,
    # so a change there fails here instead of leaving the scaler watching a group nobody
    # consumes in).
    assert "group_id=self.topics.worker_group(model, kind)" in (
        inspect.getsource(InferencePool.run))
    shared = _shared_env(documents)
    prefix = shared["SLUICE_TOPIC_PREFIX"]
    topics = Topics(prefix)
    models = load_config(ROOT / "deploy" / "config.yaml").models
    expected = {(f"{prefix}workers.{model}{'' if lane is Lane.INTERACTIVE else '.batch'}",
                 topics.requests(model, lane)) for model in models for lane in Lane}
    assert expected == {(topics.worker_group(model, lane), topics.requests(model, lane))
                        for model in models for lane in Lane}
    scaled = _of_kind(documents, "ScaledObject")["sluice-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "sluice-worker"
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    assert {(t["metadata"]["consumerGroup"], t["metadata"]["topic"])
            for t in triggers} == expected
    for trigger in triggers:
        assert trigger["metadata"]["bootstrapServers"] == shared["SLUICE_KAFKA_BOOTSTRAP"]
        assert int(trigger["metadata"]["lagThreshold"]) > 0
        assert trigger["authenticationRef"]["name"] == "sluice-kafka-lag"
    # More replicas than partitions would sit idle in every group.
    assert scaled["spec"]["maxReplicaCount"] <= int(
        shared.get("SLUICE_TOPIC_PARTITIONS", "8"))
