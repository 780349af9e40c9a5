"""The simulated OpenAI-compatible provider as a bare ASGI app.

Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, `GET /stats`.
Answers come from `simulator.answers`, so they are deterministic per prompt and their
usage is token-accurate; the same brain serves the in-process simulated deployment.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import orjson
from pydantic import ValidationError

from schemas import ChatCompletion, ChatCompletionRequest, EmbeddingRequest, Usage
from simulator.answers import simulate_completion
from simulator.asgi import (
    Receive,
    Scope,
    Send,
    describe_invalid,
    error_body,
    read_body,
    send_json,
)
from simulator.embeddings import simulate_embeddings
from simulator.faults import Fault, choose_fault
from simulator.limits import SlidingWindowLimits
from simulator.openai_rules import OpenAIParameterRules
from simulator.settings import Faults, SimulatorSettings
from simulator.state import SimulatorState
from simulator.streaming import SSE_DONE, STREAM_CUT_ERROR, sse_event, stream_chunks

_Handler = Callable[["SimulatorApp", Receive, Send], Awaitable[None]]


class SimulatorApp:
    """An ASGI app answering like an OpenAI-compatible chat completions API.

    Attributes:
        settings: How it behaves.
        state: What it has done so far (served by `GET /stats`).
    """

    def __init__(
        self, settings: SimulatorSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.state = SimulatorState(seed=settings.seed)
        self._clock = clock
        self._started = clock()
        self.limits = SlidingWindowLimits(settings.rpm, settings.tpm, settings.window_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        route = _ROUTES.get(path)
        if route is None:
            message = f"Invalid URL ({method} {scope['path']})"
            await send_json(send, 404, error_body(message, code="unknown_url"))
        elif method != route[0]:
            message = f"Method {method} is not allowed for {path}; use {route[0]}."
            await send_json(send, 405, error_body(message, code="method_not_allowed"))
        else:
            await route[1](self, receive, send)

    async def _chat_completions(self, receive: Receive, send: Send) -> None:
        state, settings = self.state, self.settings
        state.requests += 1
        # One id names the call in the header and the body, as a real provider's logs would.
        token = os.urandom(12).hex()
        headers = [(b"x-request-id", f"req-sim-{token}".encode())]
        raw = await read_body(receive)
        try:
            body = ChatCompletionRequest.model_validate_json(raw)
            OpenAIParameterRules.model_validate(body.model_extra or {})
        except ValidationError as exc:
            await self._refuse(send, exc, headers)
            return
        faults = settings.model_faults.get(body.model, settings.faults)
        fault = self._fault_for(body.model)
        if fault is not None:
            state.record_injected(fault.kind)
            if fault.hang_s:
                # Longer than the caller's timeout: it gives up (and is cancelled, in-process).
                await asyncio.sleep(fault.hang_s)
            if fault.retry_after_s is not None:
                headers.append((b"retry-after", f"{fault.retry_after_s:g}".encode()))
            state.record_error(fault.status)
            kind = "rate_limit_error" if fault.status == 429 else "server_error"
            await send_json(send, fault.status, error_body(fault.message, type_=kind), headers)
            return
        # The answer is deterministic, so its tokens are known on arrival: they count
        # against the limits then, as a provider counts a call when it accepts it.
        completion = simulate_completion(
            body,
            upstream_model=body.model,
            output_tokens=settings.output_tokens,
            request_id=f"chatcmpl-sim-{token}",
            encoding=settings.encoding,
            cached_share=settings.cached_input_share,
            answer_bytes=settings.answer_bytes,
        )
        if self.limits.enabled:
            usage = completion.usage
            spent = usage.prompt_tokens + usage.completion_tokens if usage else 0
            admitted, limit_headers = self.limits.admit(self._clock(), spent)
            headers += limit_headers
            if not admitted:
                state.record_error(429)
                message = "Rate limit reached for requests or tokens (simulated)."
                await send_json(send, 429, error_body(message, type_="rate_limit_error",
                                                      code="rate_limit_exceeded"), headers)
                return
        delay_ms = settings.latency_ms
        if settings.jitter_ms > 0:
            delay_ms += state.random.random() * settings.jitter_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        state.record_success(completion.usage)
        if body.stream:
            await self._stream(send, body, completion, headers, faults)
            return
        await send_json(send, 200, completion.model_dump_json().encode(), headers)

    async def _stream(self, send: Send, body: ChatCompletionRequest, completion: ChatCompletion,
                      headers: list[tuple[bytes, bytes]], faults: Faults) -> None:
        chunks = stream_chunks(completion, include_usage=body.wants_stream_usage())
        # A cut stream breaks off after its first words, as a provider failing mid-answer
        # does: an error event, and no [DONE].
        cut_after = 2 if faults.stream_cut_rate and \
            self.state.random.random() < faults.stream_cut_rate else None
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"), *headers]})
        for number, chunk in enumerate(chunks):
            if cut_after is not None and number == cut_after:
                self.state.record_injected("stream_cut")
                await send({"type": "http.response.body", "body": sse_event(STREAM_CUT_ERROR)})
                break
            await send({"type": "http.response.body", "body": sse_event(chunk),
                        "more_body": True})
        else:
            await send({"type": "http.response.body", "body": SSE_DONE})

    async def _refuse(self, send: Send, exc: ValidationError,
                      headers: list[tuple[bytes, bytes]]) -> None:
        """400 naming the invalid field, as OpenAI answers."""
        message, param = describe_invalid(exc)
        self.state.record_error(400)
        await send_json(send, 400, error_body(message, param=param), headers)

    def _fault_for(self, model: str) -> Fault | None:
        """Count a call to `model` and decide whether it fails on purpose."""
        self.state.requests_by_model[model] += 1
        faults = self.settings.model_faults.get(model, self.settings.faults)
        return choose_fault(faults, self.state.random, self._clock() - self._started)

    async def _embeddings(self, receive: Receive, send: Send) -> None:
        state = self.state
        state.requests += 1
        headers = [(b"x-request-id", f"req-sim-{os.urandom(12).hex()}".encode())]
        try:
            body = EmbeddingRequest.model_validate_json(await read_body(receive))
        except ValidationError as exc:
            await self._refuse(send, exc, headers)
            return
        fault = self._fault_for(body.model)
        if fault is not None:
            state.record_injected(fault.kind)
            state.record_error(fault.status)
            await send_json(send, fault.status, error_body(fault.message, type_="server_error"),
                            headers)
            return
        answer = simulate_embeddings(body, upstream_model=body.model,
                                     encoding=self.settings.encoding)
        if self.settings.latency_ms > 0:
            await asyncio.sleep(self.settings.latency_ms / 1000)
        usage = answer.usage
        state.record_success(Usage.model_construct(
            prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=0))
        await send_json(send, 200, answer.model_dump_json().encode(), headers)

    async def _models(self, receive: Receive, send: Send) -> None:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "sluicegate-simulator"}
            for model in self.settings.models
        ]
        await send_json(send, 200, orjson.dumps({"object": "list", "data": data}))

    async def _health(self, receive: Receive, send: Send) -> None:
        await send_json(send, 200, b'{"status":"ok"}')

    async def _stats(self, receive: Receive, send: Send) -> None:
        stats = self.state.snapshot()
        if self.limits.enabled:
            stats["rate_limits"] = self.limits.snapshot()
        await send_json(send, 200, orjson.dumps(stats))

    async def _set_faults(self, receive: Receive, send: Send) -> None:
        # Lets a benchmark measure the same stack healthy, then failing, then healthy again.
        try:
            faults = Faults.model_validate_json(await read_body(receive) or b"{}")
        except ValidationError as exc:
            message, param = describe_invalid(exc)
            await send_json(send, 400, error_body(message, param=param))
            return
        self.settings = self.settings.model_copy(update={"faults": faults})
        self._started = self._clock()  # fault windows count from now
        await send_json(send, 200, faults.model_dump_json().encode())


_ROUTES: dict[str, tuple[str, _Handler]] = {
    "/v1/chat/completions": ("POST", SimulatorApp._chat_completions),
    "/v1/embeddings": ("POST", SimulatorApp._embeddings),
    "/v1/models": ("GET", SimulatorApp._models),
    "/health": ("GET", SimulatorApp._health),
    "/stats": ("GET", SimulatorApp._stats),
    "/faults": ("PUT", SimulatorApp._set_faults),
}


async def _lifespan(receive: Receive, send: Send) -> None:
    # Nothing to start or stop; answering keeps servers from logging "unsupported".
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_simulator_app(
    settings: SimulatorSettings, *, clock: Callable[[], float] = time.monotonic
) -> SimulatorApp:
    """Build the simulator's ASGI app (its `state` holds the counters).

    Args:
        settings: How it behaves, injected faults included.
        clock: Monotonic seconds; fault windows are measured from the app's creation.
    """
    return SimulatorApp(settings, clock=clock)
