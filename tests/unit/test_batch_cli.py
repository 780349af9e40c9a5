"""`sluice batch`: submit --wait --output, status, cancel and list against a fake ingress."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.batch_cli import endpoint, run_batch
from sluice.cli import build_parser


class FakeIngress:
    """Just enough of /v1/files and /v1/batches; the batch completes on the second poll."""

    def __init__(self) -> None:
        self.polls = 0
        self.uploaded = b""

    def batch(self, status: str) -> dict[str, Any]:
        done = 2 if status == "completed" else 0
        return {"id": "batch_1", "object": "batch", "status": status,
                "request_counts": {"total": 2, "completed": done, "failed": 0},
                "output_file_id": "file-out" if done else None, "error_file_id": None}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer sk-test"
        path = request.url.path
        if path == "/v1/files":
            self.uploaded = request.read()
            return httpx.Response(200, json={"id": "file-in", "bytes": 42})
        if path == "/v1/batches" and request.method == "POST":
            assert json.loads(request.content)["input_file_id"] == "file-in"
            return httpx.Response(200, json=self.batch("validating"))
        if path == "/v1/batches/batch_1":
            self.polls += 1
            return httpx.Response(200, json=self.batch("completed" if self.polls > 1
                                                       else "in_progress"))
        if path == "/v1/batches/batch_1/cancel":
            return httpx.Response(200, json=self.batch("cancelling"))
        if path == "/v1/files/file-out/content":
            return httpx.Response(200, content=b'{"custom_id":"a"}\n{"custom_id":"b"}\n')
        if path == "/v1/batches":
            return httpx.Response(200, json={"object": "list", "data": [self.batch("completed")],
                                             "first_id": "batch_1", "last_id": "batch_1",
                                             "has_more": False})
        return httpx.Response(404, json={"error": {"message": "nope"}})


def _run(fake: FakeIngress, *argv: str) -> int:
    args = build_parser().parse_args(["batch", *argv])
    client = httpx.Client(transport=httpx.MockTransport(fake), base_url="http://ingress",
                          headers={"Authorization": "Bearer sk-test"})
    return run_batch(args, client)


def test_submit_waits_and_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sluice.batch_cli.time.sleep", lambda _: None)
    source = tmp_path / "in.jsonl"
    source.write_text('{"custom_id":"a"}\n')
    fake = FakeIngress()
    out = tmp_path / "out.jsonl"
    assert _run(fake, "submit", str(source), "--wait", "--output", str(out)) == 0
    assert b'name="purpose"' in fake.uploaded and b'{"custom_id":"a"}' in fake.uploaded
    assert out.read_text().count("custom_id") == 2
    printed = capsys.readouterr().out
    assert "batch batch_1 completed: 2 completed, 0 failed of 2" in printed


def test_status_cancel_list(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeIngress()
    assert _run(fake, "cancel", "batch_1") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cancelling"
    assert _run(fake, "list") == 0
    assert "batch_1  completed   2/2 done, 0 failed" in capsys.readouterr().out


def test_endpoint_falls_back_to_sluice_dev(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_URL", raising=False)
    monkeypatch.delenv("SLUICE_API_KEY", raising=False)
    (tmp_path / "endpoints.json").write_text(json.dumps(
        {"ingress_url": "http://127.0.0.1:8080/", "api_key": "sk-dev"}))
    args = argparse.Namespace(url=None, api_key=None, state_dir=tmp_path)
    assert endpoint(args) == ("http://127.0.0.1:8080", "sk-dev")
