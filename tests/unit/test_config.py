"""Config errors name the bad key; valid files load."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from broker.config import load_config, parse_config
from broker.errors import ConfigError

VALID = {
    "models": {"gpt-4o-mini": {"deployments": ["a", "b"]}},
    "deployments": {
        "a": {
            "provider": "openai",
            "base_url": "http://x/v1",
            "model": "gpt-4o-mini",
            "input_usd_per_mtok": "0.15",
            "output_usd_per_mtok": "0.60",
        },
        "b": {"provider": "simulated", "model": "gpt-4o-mini"},
    },
}


def test_valid_config_keeps_failover_order() -> None:
    config = parse_config(VALID)
    assert [name for name, _ in config.deployment_chain("gpt-4o-mini")] == ["a", "b"]
    assert config.deployments["a"].input_usd_per_mtok == Decimal("0.15")
    assert config.deployments["b"].output_usd_per_mtok is None


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"models": {"m": {"deployments": ["nope"]}}}, "models.m.deployments[0]: unknown"),
        ({"models": {"bad/name": {"deployments": ["a"]}}}, "models.bad/name:"),
        ({"deployments": {"a": {"provider": "openai", "model": "x"}}}, "base_url is required"),
        (
            {"deployments": {"a": {"provider": "carrier-pigeon", "model": "x"}}},
            "deployments.a.provider",
        ),
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
def test_errors_name_the_key(change: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse_config({**VALID, **change})
    assert names in str(caught.value)


def test_load_config_reports_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_demo_config_is_valid(tmp_path: Path) -> None:
    demo = Path(__file__).parents[2] / "sluice" / "demo.yaml"
    path = tmp_path / "demo.yaml"
    path.write_text(demo.read_text().replace("{mock_url}", "http://127.0.0.1:1/v1"))
    assert set(load_config(path).models) == {"gpt-4o-mini", "llama-3.1-8b",
                                             "text-embedding-3-small"}


def test_a_model_name_that_would_be_another_models_batch_lane_is_refused() -> None:
    bad = {**VALID, "models": {"gpt-4o-mini.batch": {"deployments": ["a"]}}}
    with pytest.raises(ConfigError,
                       match=r"models\.gpt-4o-mini\.batch: .*may not end in '\.batch'"):
        parse_config(bad)
