"""A simulated answer as OpenAI streams it: server-sent `chat.completion.chunk` events
(`schemas.streaming.stream_chunks`), then `[DONE]`, or an error event when cut."""

from __future__ import annotations

from schemas.streaming import SSE_DONE, sse_event, stream_chunks

__all__ = ["SSE_DONE", "STREAM_CUT_ERROR", "sse_event", "stream_chunks"]
STREAM_CUT_ERROR = {"error": {
    "message": "The server had an error while processing your request (simulated).",
    "type": "server_error", "param": None, "code": None}}
