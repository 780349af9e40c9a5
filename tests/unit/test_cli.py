"""The small CLI commands: schema export and config check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.cli import main


def test_schemas_export_writes_one_json_schema_per_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schemas", "export", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "InferenceRequest.schema.json" in written
    assert "UsageEvent.schema.json" in written
    request = json.loads((tmp_path / "out" / "InferenceRequest.schema.json").read_text())
    assert {"id", "model", "body", "schema_version"} <= set(request["properties"])
    assert set(request["required"]) >= {"id", "model", "body", "created_at"}
    usage = json.loads((tmp_path / "out" / "UsageEvent.schema.json").read_text())
    assert usage["properties"]["cached_input_tokens"] == {
        "default": 0, "minimum": 0, "title": "Cached Input Tokens", "type": "integer"}
    assert "wrote" in capsys.readouterr().out
    asyncapi = json.loads((tmp_path / "out" / "asyncapi.json").read_text())
    assert any(channel["address"] == "sluice.requests.{model}"
               for channel in asyncapi["channels"].values())


def test_config_check_accepts_a_valid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text(
        "models:\n  m:\n    deployments: [a, b]\n"
        "deployments:\n  a: {provider: simulated, model: x}\n  b: {provider: simulated, model: y}\n"
    )
    assert main(["config", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "m: a -> b" in out
    assert "OK (1 models, 2 deployments)" in out


def test_config_check_names_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n  m:\n    deployments: [nope]\n"
                      "deployments:\n  a: {provider: simulated, model: x}\n")
    assert main(["config", "check", str(config)]) == 2
    assert "models.m.deployments[0]: unknown deployment 'nope'" in capsys.readouterr().err


def test_commands_needing_a_config_say_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SLUICE_CONFIG", raising=False)
    assert main(["worker"]) == 2
    assert "pass --config FILE or set SLUICE_CONFIG" in capsys.readouterr().err
