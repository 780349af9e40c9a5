"""Run the simulator as an HTTP server (`sluice mock-provider`)."""

from __future__ import annotations

import uvicorn

from broker.tokens import encoding_for_model
from simulator.app import create_simulator_app
from simulator.settings import SimulatorSettings


def serve_simulator(settings: SimulatorSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the simulator until interrupted (blocking).

    Args:
        settings: How the simulator behaves.
        host: Interface to listen on.
        port: TCP port to listen on.
    """
    # Load the vocabularies now: loading o200k_base takes ~2 s, which at the first call
    # would stall the event loop and bunch up calls the rate limits then judge.
    for model in ("gpt-4o", "gpt-4", *settings.models):
        encoding_for_model(model, settings.encoding).count("warm up")
    uvicorn.run(
        create_simulator_app(settings),
        host=host,
        port=port,
        # "auto" picks uvloop and httptools when installed: the simulator sits on the
        # benchmark path, and the access log alone would cost more than an answer.
        loop="auto",
        http="auto",
        access_log=False,
        # Nothing reads the caller's address; parsing X-Forwarded-For is pure cost here.
        proxy_headers=False,
        log_level="warning",
    )
