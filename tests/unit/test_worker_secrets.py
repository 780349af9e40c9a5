"""Deployment secrets are read from the environment once, by the worker's composition root."""

from __future__ import annotations

import logging

import pytest

from broker.config import parse_config
from sluice.processes import _api_keys


def test_each_deployment_gets_the_secret_its_variable_holds_and_a_missing_one_is_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SLUICE_TEST_OPENAI_KEY", "sk-one")
    monkeypatch.delenv("SLUICE_TEST_MISSING_KEY", raising=False)
    config = parse_config({
        "models": {"m": {"deployments": ["with-key", "without-key", "keyless"]}},
        "deployments": {
            "with-key": {"provider": "openai", "model": "x", "base_url": "http://a/v1",
                         "api_key_env": "SLUICE_TEST_OPENAI_KEY"},
            "without-key": {"provider": "openai", "model": "x", "base_url": "http://b/v1",
                            "api_key_env": "SLUICE_TEST_MISSING_KEY"},
            "keyless": {"provider": "openai", "model": "x", "base_url": "http://c/v1"},
        },
    })
    logging.getLogger("sluice").disabled = False  # another test's logging setup may disable it
    with caplog.at_level(logging.ERROR, logger="sluice"):
        assert _api_keys(config) == {"with-key": "sk-one"}
    assert "deployments.without-key: SLUICE_TEST_MISSING_KEY is not set" in caplog.text
