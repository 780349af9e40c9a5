"""`sluice templates create|list|show` against a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sluice.cli import main
from tests.integration.test_prompt_templates import GREET, GREET_V2

pytestmark = pytest.mark.integration


def test_cli_creates_lists_and_shows_versions(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    path = tmp_path / "greet.yaml"
    path.write_text(yaml.safe_dump({key: GREET[key] for key in
                                    ("messages", "parameters", "variables")}))
    assert main(["templates", "create", "greet", "--file", str(path)]) == 0
    assert "template greet version 1 created" in capsys.readouterr().out
    path.write_text(yaml.safe_dump({key: GREET_V2[key] for key in
                                    ("messages", "parameters", "variables")}))
    assert main(["templates", "create", "greet", "--file", str(path)]) == 0
    assert "version 2" in capsys.readouterr().out
    assert main(["templates", "list"]) == 0
    assert capsys.readouterr().out.split("\t")[:3] == ["greet", "v2", "gpt-4o-mini"]
    assert main(["templates", "show", "greet", "--version", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["messages"] == GREET["messages"]
    assert main(["templates", "show", "greet", "--version", "3"]) == 2
    path.write_text(yaml.safe_dump({"messages": [{"role": "user", "content": "{{ who }}"}],
                                    "parameters": {"model": "m"}}))
    assert main(["templates", "create", "greet", "--file", str(path)]) == 2
    assert "'who'" in capsys.readouterr().err


def test_a_new_version_keeps_the_approval_requirement_unless_it_lifts_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    path = tmp_path / "gated.yaml"
    spec = {key: GREET[key] for key in ("messages", "parameters", "variables")}

    def create(**extra: object) -> None:
        path.write_text(yaml.safe_dump(spec | extra))
        assert main(["templates", "create", "gated", "--file", str(path)]) == 0
        capsys.readouterr()

    def required(version: int) -> bool:
        assert main(["templates", "show", "gated", "--version", str(version)]) == 0
        return bool(json.loads(capsys.readouterr().out)["requires_approval"])

    create(requires_approval=True)
    create()  # a typo fixed, the flag not repeated: still gated
    create(requires_approval=False)  # lifted on purpose
    assert [required(version) for version in (1, 2, 3)] == [True, True, False]
