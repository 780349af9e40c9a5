"""`sluice access request|list|approve|deny` against a real PostgreSQL."""

from __future__ import annotations

import pytest

from sluice.cli import main

pytestmark = pytest.mark.integration


def test_cli_access_lifecycle(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapping of ids in the output
    assert main(["access", "request", "template:summarize", "--tenant", "acme",
                 "--reason", "pilot"]) == 0
    grant_id = capsys.readouterr().out.split()[0]
    assert grant_id.startswith("acc_")

    assert main(["access", "list", "--pending"]) == 0
    assert grant_id in capsys.readouterr().out
    assert main(["access", "approve", grant_id, "--reason", "ok"]) == 0
    assert f"{grant_id} approved template:summarize" in capsys.readouterr().out
    assert main(["access", "list", "--pending"]) == 0
    assert "no access requests awaiting a decision" in capsys.readouterr().out
    assert main(["access", "approve", grant_id]) == 2  # already approved: refused
    capsys.readouterr()
    assert main(["access", "deny", grant_id, "--reason", "ended"]) == 0
    capsys.readouterr()
    assert main(["access", "list", "--audit"]) == 0
    audit = capsys.readouterr().out
    assert all(action in audit for action in ("requested", "approved", "denied"))
    assert main(["access", "request", "gpt-4o", "--tenant", "acme", "--reason", "x"]) == 2
