"""Provider calls carry the request's trace context (W3C `traceparent`, `tracestate`).

One wrapper around every transport `ProviderTransports` builds, so each adapter, and the
native batch lane, sends it without code of its own: whatever span is current when a call
is sent (the worker's `chat {model}` span) becomes the parent of the provider's spans, for
providers and proxies that trace. Without a span nothing is added.
"""

from __future__ import annotations

import httpx

from broker.telemetry.tracing import http_trace_headers


class TraceContextTransport(httpx.AsyncBaseTransport):
    """Send through `inner`, adding the current span's trace context headers."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for name, value in http_trace_headers().items():
            request.headers[name] = value  # replaces any the caller set: ours is the parent
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
