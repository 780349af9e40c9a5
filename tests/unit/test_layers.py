"""The layer direction is a test, not a hope: import-linter's contracts from pyproject.toml."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).parents[2]


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    # import-linter configures its logging with `dictConfig`, which disables every logger
    # that exists already (ours included): later tests reading our logs would see nothing.
    loggers = [logger for logger in logging.root.manager.loggerDict.values()
               if isinstance(logger, logging.Logger) and not logger.disabled]
    try:
        assert lint_imports(config_filename=os.fspath(ROOT / "pyproject.toml"),
                            no_cache=True) == 0
    finally:
        for logger in loggers:
            logger.disabled = False
