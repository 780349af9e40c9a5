"""What a worker keeps of an answer it is streaming, and what it bills when one breaks off.

Chunks go to the waiting ingress the moment they arrive (through the pool's emitter), so
once the first one is out the request can no longer fail over: a provider failure or a
cancel then ends it, and the call is billed for what was generated: the prompt as counted
for the budget, and the streamed text and tool-call arguments counted with the
deployment's encoding (the provider's usage chunk, which comes last, never arrived).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas import InferenceRequest

StreamEmitter = Callable[[InferenceRequest, int, dict[str, Any]], Awaitable[None]]
"""Hands chunk number `n` of a request's answer to whoever waits for it."""


class StreamProgress:
    """The chunks of one provider call handed on so far."""

    def __init__(self) -> None:
        self.sent = 0
        self._pieces: list[str] = []

    def add(self, chunk: dict[str, Any]) -> None:
        """Note a chunk that went out, and the generated text it carried."""
        self.sent += 1
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str):
                    self._pieces.append(delta[key])
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                self._pieces += [function.get("name") or "", function.get("arguments") or ""]

    def generated_text(self) -> str:
        """Everything the model generated in the chunks sent, joined."""
        return "".join(self._pieces)
