"""`sluice ingress` bounds what uvicorn accepts and wires the result announcements."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import uvicorn

import sluice.processes as processes
from broker.settings import KafkaSettings
from broker.stores.notifications import FinalResultListener


async def _same(settings: KafkaSettings) -> KafkaSettings:
    return settings


async def _nothing(config: object) -> None:
    return None


def test_ingress_runs_uvicorn_with_a_concurrency_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("models: {m: {deployments: [d]}}\n"
                      "deployments: {d: {provider: simulated, model: gpt-4o-mini}}\n")
    monkeypatch.setenv("SLUICE_MAX_CONNECTIONS", "512")
    monkeypatch.setattr(processes, "with_broker_limits", _same)
    monkeypatch.setattr(processes, "_import_config_prices", _nothing)
    seen: dict[str, Any] = {}

    def run(app: object, **options: Any) -> None:
        seen.update(options, app=app)

    monkeypatch.setattr(uvicorn, "run", run)
    args = argparse.Namespace(config=config, host=None, port=None)
    assert processes.run_ingress(args) == 0
    assert seen["limit_concurrency"] == 512
    assert seen["backlog"] == 512
    services = seen["app"].app.state.ingress.services  # serve() wraps the FastAPI app
    assert isinstance(services.announcements, FinalResultListener)
