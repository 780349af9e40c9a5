"""Both providers' batch APIs, simulated: OpenAI's `/v1/files` + `/v1/batches`
(`simulator.batch_openai`) and Anthropic's Message Batches, `/v1/messages/batches`
(`simulator.batch_anthropic`). Their files, batches and timing are `simulator.batch_state`.

Register `BATCH_ROUTES` with the app's router; the state of each app is `batch_state(app)`
(set its `in_progress_s` to choose how long a batch runs).
"""

from __future__ import annotations

from simulator.batch_anthropic import ROUTES as ANTHROPIC_BATCH_ROUTES
from simulator.batch_openai import ROUTES as OPENAI_BATCH_ROUTES
from simulator.batch_state import BatchAPIState, batch_state
from simulator.routes import Route

__all__ = ["BATCH_ROUTES", "BatchAPIState", "batch_state"]

BATCH_ROUTES: tuple[Route, ...] = OPENAI_BATCH_ROUTES + ANTHROPIC_BATCH_ROUTES
"""Every route of both batch APIs (OpenAI's and Anthropic's), for the app's router."""
