"""The simulated provider as a bare ASGI app, speaking four providers' wire formats.

Endpoints:
    OpenAI (`simulator.openai_api`): `POST /v1/chat/completions`, `POST /v1/embeddings`.
    Azure OpenAI (`simulator.azure_api`): `POST /openai/deployments/{deployment}/chat/
        completions?api-version=…` and `…/embeddings`.
    Anthropic (`simulator.anthropic_api`): `POST /v1/messages`,
        `POST /v1/messages/count_tokens`.
    Gemini (`simulator.gemini_api`): `POST /{v1,v1beta}/models/{model}:generateContent`,
        `:streamGenerateContent`, `:countTokens`, `:embedContent`, `:batchEmbedContents`.
    Batches (`simulator.batch_api`): OpenAI's `/v1/files` and `/v1/batches`, Anthropic's
        `/v1/messages/batches`.
    The simulator's own: `GET /v1/models`, `GET /health`, `GET /stats`, `PUT /faults`.

Every format answers from the one brain, `simulator.answers` (deterministic per prompt,
token-accurate usage), and is judged by the same faults and rate limits of this app: a
format module translates its request into a `ChatCompletionRequest`, calls the shared
steps below (`inject_fault`, `simulate`, `admit`, `pause`) and translates the completion
back. What differs per provider (error envelope, limit headers) is its `Dialect`.

Adding endpoints: write a module `simulator/<name>_api.py` whose handlers are
`async def handler(app: SimulatorApp, request: Request, send: Send) -> None` and which
exports `ROUTES: tuple[Route, ...]`, e.g. `Route("GET", "/v1/batches/{batch_id}", get)`
(braces name a path segment, read from `request.params`); then import its `ROUTES` as
`<NAME>_ROUTES` and add them to `_ROUTER` at the bottom of this file. Exact paths are
looked up first, then patterns in the order given. Count each request with
`app.begin(format)` so `/stats` sees it, and answer through the shared steps and a
`Dialect` so faults, limits and errors behave as in every other format.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import orjson
from pydantic import ValidationError

from schemas import ChatCompletion, ChatCompletionRequest
from simulator.answers import simulate_completion
from simulator.anthropic_api import ROUTES as ANTHROPIC_ROUTES
from simulator.asgi import Receive, Scope, Send, describe_invalid, error_body, send_json
from simulator.azure_api import ROUTES as AZURE_ROUTES
from simulator.batch_api import BATCH_ROUTES
from simulator.dialects import Dialect, Headers
from simulator.faults import Fault, choose_fault
from simulator.gemini_api import ROUTES as GEMINI_ROUTES
from simulator.limits import SlidingWindowLimits
from simulator.openai_api import ROUTES as OPENAI_ROUTES
from simulator.prompt_cache import PromptCache
from simulator.routes import Request, Route, Router
from simulator.settings import Faults, SimulatorSettings
from simulator.state import SimulatorState

_RATE_LIMITED = "Rate limit reached for requests or tokens (simulated)."


class SimulatorApp:
    """An ASGI app answering like OpenAI, Azure OpenAI, Anthropic and Gemini.

    Attributes:
        settings: How it behaves.
        state: What it has done so far (served by `GET /stats`).
        limits: The rate limits every format shares (one provider account).
        prompt_cache: The prefixes Anthropic-format calls asked to cache.
    """

    def __init__(
        self, settings: SimulatorSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.state = SimulatorState(seed=settings.seed)
        self.clock = clock
        self._started = clock()
        self.limits = SlidingWindowLimits(settings.rpm, settings.tpm, settings.window_s)
        self.prompt_cache = PromptCache(clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        handler, params, allowed = _ROUTER.find(method, path)
        if handler is not None:
            await handler(self, Request(scope, receive, params), send)
        elif allowed:
            message = f"Method {method} is not allowed for {path}; use {' or '.join(allowed)}."
            await send_json(send, 405, error_body(message, code="method_not_allowed"))
        else:
            message = f"Invalid URL ({method} {scope['path']})"
            await send_json(send, 404, error_body(message, code="unknown_url"))

    # --- the steps every format's handler takes, in this order --------------------------

    def begin(self, format_name: str) -> str:
        """Count a request in `format_name`; a fresh token naming it in ids and headers."""
        self.state.record_request(format_name)
        return os.urandom(12).hex()

    async def send_error(self, send: Send, dialect: Dialect, status: int, message: str,
                         headers: Headers, *, retry_after_s: float | None = None,
                         param: str | None = None, code: str | None = None) -> None:
        """Answer `status` in the dialect's envelope, and count it."""
        self.state.record_error(status)
        body, extra = dialect.error(status, message, retry_after_s=retry_after_s,
                                    param=param, code=code)
        await send_json(send, status, body, [*headers, *extra])

    async def refuse_invalid(self, send: Send, dialect: Dialect, exc: ValidationError,
                             headers: Headers) -> None:
        """400 naming the invalid field, as the providers answer."""
        message, param = describe_invalid(exc)
        await self.send_error(send, dialect, 400, message, headers, param=param)

    async def inject_fault(self, send: Send, dialect: Dialect, model: str,
                           headers: Headers) -> bool:
        """Fail this call to `model` on purpose if the faults say so (and say whether)."""
        fault = self._fault_for(model)
        if fault is None:
            return False
        self.state.record_injected(fault.kind)
        if fault.hang_s:
            # Longer than the caller's timeout: it gives up (and is cancelled, in-process).
            await asyncio.sleep(fault.hang_s)
        status = dialect.fault_status(fault.status)
        message = Fault(fault.kind, status).message
        await self.send_error(send, dialect, status, message, headers,
                              retry_after_s=fault.retry_after_s)
        return True

    def simulate(self, body: ChatCompletionRequest, request_id: str, *,
                 cached_share: float | None = None) -> ChatCompletion:
        """The brain's answer to `body`, with this simulator's settings."""
        settings = self.settings
        return simulate_completion(
            body,
            upstream_model=body.model,
            output_tokens=settings.output_tokens,
            request_id=request_id,
            encoding=settings.encoding,
            cached_share=settings.cached_input_share if cached_share is None else cached_share,
            answer_bytes=settings.answer_bytes,
        )

    async def admit(self, send: Send, dialect: Dialect, tokens: int, headers: Headers) -> bool:
        """Count a call of `tokens` against the rate limits; answer 429 if it does not fit.

        The answer is deterministic, so its tokens are known on arrival: they count against
        the limits then, as a provider counts a call when it accepts it. Every answer gets
        the dialect's limit headers (appended to `headers`).
        """
        if not self.limits.enabled:
            return True
        verdict = self.limits.judge(self.clock(), tokens)
        headers += dialect.limit_headers(verdict)
        if verdict.admitted:
            return True
        await self.send_error(send, dialect, 429, _RATE_LIMITED, headers,
                              retry_after_s=verdict.wait_s, code="rate_limit_exceeded")
        return False

    async def pause(self) -> None:
        """The configured latency (and jitter) before an answer."""
        delay_ms = self.settings.latency_ms
        if self.settings.jitter_ms > 0:
            delay_ms += self.state.random.random() * self.settings.jitter_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

    def stream_cut_after(self, model: str) -> int | None:
        """After how many events a stream to `model` breaks off on purpose, or None.

        A cut stream breaks off after its first words, as a provider failing mid-answer.
        """
        faults = self.settings.model_faults.get(model, self.settings.faults)
        if faults.stream_cut_rate and self.state.random.random() < faults.stream_cut_rate:
            return 2
        return None

    def _fault_for(self, model: str) -> Fault | None:
        """Count a call to `model` and decide whether it fails on purpose."""
        self.state.requests_by_model[model] += 1
        faults = self.settings.model_faults.get(model, self.settings.faults)
        return choose_fault(faults, self.state.random, self.clock() - self._started)

    # --- the simulator's own endpoints --------------------------------------------------

    async def _models(self, request: Request, send: Send) -> None:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "sluicegate-simulator"}
            for model in self.settings.models
        ]
        await send_json(send, 200, orjson.dumps({"object": "list", "data": data}))

    async def _health(self, request: Request, send: Send) -> None:
        await send_json(send, 200, b'{"status":"ok"}')

    async def _stats(self, request: Request, send: Send) -> None:
        stats = self.state.snapshot()
        if self.limits.enabled:
            stats["rate_limits"] = self.limits.snapshot()
        await send_json(send, 200, orjson.dumps(stats))

    async def _set_faults(self, request: Request, send: Send) -> None:
        # Lets a benchmark measure the same stack healthy, then failing, then healthy again.
        try:
            faults = Faults.model_validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            message, param = describe_invalid(exc)
            await send_json(send, 400, error_body(message, param=param))
            return
        self.settings = self.settings.model_copy(update={"faults": faults})
        self._started = self.clock()  # fault windows count from now
        await send_json(send, 200, faults.model_dump_json().encode())


_ROUTER = Router([
    *OPENAI_ROUTES,
    *AZURE_ROUTES,
    *ANTHROPIC_ROUTES,
    *GEMINI_ROUTES,
    *BATCH_ROUTES,
    Route("GET", "/v1/models", SimulatorApp._models),
    Route("GET", "/health", SimulatorApp._health),
    Route("GET", "/stats", SimulatorApp._stats),
    Route("PUT", "/faults", SimulatorApp._set_faults),
])


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
