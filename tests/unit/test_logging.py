"""Service logging: one line per event, without a line per provider call."""

from __future__ import annotations

import logging

from sluice.runtime import configure_logging


def test_http_clients_log_warnings_only() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging()
    try:
        for name in ("httpx", "httpcore", "aiokafka"):
            assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
        assert logging.getLogger("sluice.worker").getEffectiveLevel() == logging.INFO
    finally:
        for name in ("httpx", "httpcore", "aiokafka"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
