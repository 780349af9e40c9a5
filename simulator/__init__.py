"""The simulated provider: `sluice mock-provider`.

Speaks OpenAI's, Azure OpenAI's, Anthropic's and Gemini's wire formats (see
`simulator.app`), all answered by one deterministic brain with token-accurate usage,
configurable latency, faults and rate limits, and counters at `GET /stats`, for load
tests and development without a real (paid) provider.
"""

from simulator.app import SimulatorApp, create_simulator_app
from simulator.server import serve_simulator
from simulator.settings import Faults, FaultWindow, SimulatorSettings
from simulator.state import SimulatorState

__all__ = [
    "FaultWindow",
    "Faults",
    "SimulatorApp",
    "SimulatorSettings",
    "SimulatorState",
    "create_simulator_app",
    "serve_simulator",
]
