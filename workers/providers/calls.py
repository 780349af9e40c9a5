"""What every call to a provider's HTTP API does alike: build, send, read, and translate.

The provider adapters (`openai_compatible`, `azure_openai`, `anthropic`, `gemini`) and the
native batch lane (`workers.batches.native.http`) all call through here, so a status means
the same thing whichever vendor answered it:

| the provider answered | raised |
|---|---|
| a timeout, a refused or broken connection | `ProviderRetriable` |
| 408, 409, 429, any 5xx (Anthropic's 529 too), a 3xx | `ProviderRetriable` (1) |
| 401, 403, 404, or a body saying the same (`deployment_fault`) | `ProviderRetriable` (2) |
| any other 4xx | `ProviderRejected`, with the provider's words |

1. With `retry_after_s` and the rate-limit headers. 409 is OpenAI's "busy, try again".
2. Our key expired or lacks access, or the upstream model or URL does not exist: another
   deployment may well answer. The provider's words (which can quote part of our key or
   an organisation id) are logged for operators and never put in the error a tenant sees.

A 3xx is this deployment's misconfiguration (nothing here follows redirects: the adapters
send through a transport, not a client). Vendor-specific readings stay in the vendor's
module and reach `classify_status` as arguments.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import httpx
import orjson

from broker.errors import ProviderRejected, ProviderRetriable
from workers.providers.aiohttp_transport import STREAM_RESPONSE

USER_AGENT = b"sluicegate"
RETRIABLE_CLIENT_STATUSES = frozenset({408, 409, 429})
DEPLOYMENT_FAULT_STATUSES = frozenset({401, 403, 404})
MAX_MESSAGE_CHARS = 500
"""How much of a provider's error text an error message quotes."""
_RATE_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after")
_TIMEOUT_PHASES = ("connect", "read", "write", "pool")
_DEFAULT_CHECK = "its API key, upstream model and base_url"
log = logging.getLogger("sluice.providers")

Headers = Sequence[tuple[bytes, bytes]]


def json_headers(url: httpx.URL, *extra: tuple[bytes, bytes]
                 ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The headers of a JSON call to `url`, then of its streamed twin (which accepts
    `text/event-stream`): host, accept, content type, user agent, then `extra` (a key,
    a version).

    Built once per deployment: re-building headers on every call showed in the profile.
    """
    headers = [(b"host", url.netloc), (b"accept", b"application/json"),
               (b"content-type", b"application/json"), (b"user-agent", USER_AGENT), *extra]
    streamed = [(name, b"text/event-stream" if name == b"accept" else value)
                for name, value in headers]
    return headers, streamed


def build_request(method: str, url: httpx.URL, headers: Headers, content: bytes | None,
                  timeout_s: float, *, stream: bool = False) -> httpx.Request:
    """A request ready for `transport.handle_async_request`.

    `headers` must already hold `host`: given the headers and the body as a stream, httpx
    builds no headers of its own per call (its defaults for `content=` showed in the
    profile of the OpenAI-compatible adapter).
    """
    # What httpx.Timeout(timeout_s).as_dict() gives, without the object.
    extensions: dict[str, Any] = {"timeout": dict.fromkeys(_TIMEOUT_PHASES, timeout_s)}
    if stream:
        extensions[STREAM_RESPONSE] = True
    if content is not None:
        headers = [*headers, (b"content-length", b"%d" % len(content))]
    return httpx.Request(method, url, headers=headers, stream=httpx.ByteStream(content or b""),
                         extensions=extensions)


async def read_answer(transport: httpx.AsyncBaseTransport, request: httpx.Request,
                      deployment: str, timeout_s: float) -> httpx.Response:
    """Send `request` and read its whole answer, whatever its status, within `timeout_s`.

    Raises:
        ProviderRetriable: A timeout or a connection error.
    """
    try:
        # httpx's timeout bounds each phase (connect, each read); asyncio's bounds the
        # whole call, so a provider trickling bytes cannot outlive the deadline.
        async with asyncio.timeout(timeout_s):
            response = await transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()  # the connection goes back to the pool
    except (httpx.RequestError, TimeoutError) as exc:
        translate_transport(exc, deployment, timeout_s)
    return response


async def open_stream(transport: httpx.AsyncBaseTransport, request: httpx.Request,
                      deployment: str, timeout_s: float) -> httpx.Response:
    """Send `request` and return as soon as the answer's head is in.

    A 2xx answer is left open for its body to be read as it arrives (the caller closes
    it); any other is read whole, so its error body can be classified, and closed. The
    read timeout bounds each wait for the next bytes; the caller bounds the whole answer
    (a long answer legitimately streams for minutes).

    Raises:
        ProviderRetriable: A timeout or a connection error.
    """
    try:
        response = await transport.handle_async_request(request)
        if not response.is_success:
            try:
                await response.aread()
            finally:
                await response.aclose()
    except httpx.RequestError as exc:
        translate_transport(exc, deployment, timeout_s)
    return response


def translate_transport(exc: httpx.RequestError | TimeoutError, deployment: str,
                        timeout_s: float) -> NoReturn:
    """Raise a timeout or connection error as the `ProviderRetriable` it is."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        message = f"deployment '{deployment}' timed out after {timeout_s}s"
    else:
        message = f"deployment '{deployment}' unreachable: {type(exc).__name__}: {exc}"
    raise ProviderRetriable(message, deployment=deployment) from exc


def classify_status(response: httpx.Response, deployment: str, *, message: str | None = None,
                    operation: str | None = None, deployment_fault: bool = False,
                    check: str = _DEFAULT_CHECK,
                    retry_delay_s: float | None = None) -> NoReturn:
    """Raise the provider error a non-2xx `response` means (the table above).

    Args:
        response: The answer, read whole.
        deployment: The deployment's name, for messages and metrics.
        message: The provider's own words; by default `provider_error_message`'s reading
            of the body.
        operation: What was called (`GET /v1/batches/b1`), named in the message when given.
        deployment_fault: The body blames the deployment even though the status is not
            401/403/404 (Google answers an invalid key with 400).
        check: What an operator must check at a deployment fault.
        retry_delay_s: A wait the body asked for, preferred over the headers' (Google's
            `RetryInfo`).

    Raises:
        ProviderRetriable: As the table says.
        ProviderRejected: Any other 4xx.
    """
    status = response.status_code
    if message is None:
        message = provider_error_message(response.content, response.reason_phrase)
    called = f" to {operation}" if operation else ""
    said = f"deployment '{deployment}' answered {status}{called}: {message}"
    if deployment_fault or status in DEPLOYMENT_FAULT_STATUSES:
        log.warning("%s; check %s", said, check)
        raise ProviderRetriable(
            f"deployment '{deployment}' refused sluicegate's call ({status}); an operator "
            f"must check {check}", status_code=status, deployment=deployment)
    if status in RETRIABLE_CLIENT_STATUSES or not 400 <= status < 500:
        raise ProviderRetriable(
            said, status_code=status, deployment=deployment,
            retry_after_s=(retry_delay_s if retry_delay_s is not None
                           else retry_after_s(response.headers)),
            rate_limit_headers=rate_limit_headers(response.headers))
    raise ProviderRejected(said, status_code=status, deployment=deployment)


def undecodable(response: httpx.Response, deployment: str, what: str) -> ProviderRetriable:
    """The error for a success whose body is not `what` (worth another try)."""
    return ProviderRetriable(
        f"deployment '{deployment}' answered {response.status_code} with a body that is not "
        f"{what}", status_code=response.status_code, deployment=deployment)


def decoded_body(content: bytes) -> Any:
    """An error body's JSON (`None` if it is none); the first item of a list, as some
    Google front ends wrap their envelope in one."""
    try:
        data: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return data[0] if isinstance(data, list) and data else data


def envelope_words(data: Any) -> str | None:
    """The words of a decoded error envelope, labelled with the vendor's kind of error.

    Understands OpenAI's and Azure's `{"error": {"message", "type", "code"}}` (the message
    alone), Anthropic's `{"type": "error", "error": {"type", "message"}}` (`type: message`),
    Google's `{"error": {"code", "message", "status"}}` (`status: message`) and Ollama's
    `{"error": "..."}`. `None` when `data` is none of them.
    """
    if not isinstance(data, dict):
        return None
    error = data.get("error", data)
    if isinstance(error, str):
        return error[:MAX_MESSAGE_CHARS]
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    words = error["message"][:MAX_MESSAGE_CHARS]
    # OpenAI's error has a `type` too, but it has always been left out of its messages.
    label = error.get("status") if "status" in error else (
        error.get("type") if data.get("type") == "error" else None)
    return f"{label}: {words}" if isinstance(label, str) and label else words


def provider_error_message(content: bytes, fallback: str) -> str:
    """The provider's own words in an error body: its envelope's (see `envelope_words`),
    else the start of its text, else `fallback` (the reason phrase)."""
    words = envelope_words(decoded_body(content))
    if words is not None:
        return words
    text = content.decode(errors="replace").strip()
    return text[:MAX_MESSAGE_CHARS] if text else fallback


def rate_limit_headers(headers: httpx.Headers) -> dict[str, str]:
    """The `x-ratelimit-*`, `anthropic-ratelimit-*` and `retry-after*` headers."""
    return {name: value for name, value in headers.items()
            if name.startswith(_RATE_LIMIT_PREFIXES)}


def retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms` (Azure, OpenAI), or `retry-after` (seconds or
    an HTTP date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # HTTP dates are GMT
    return max(0.0, moment.timestamp() - time.time())


async def sse_data(response: httpx.Response, deployment: str,
                   timeout_s: float) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined; comments skipped).

    Event names are not kept: every vendor read here repeats the kind of event in its data
    (Anthropic's `"type"`), and OpenAI's and Gemini's streams name none.

    Raises:
        ProviderRetriable: The connection breaks off or stalls past `timeout_s`.
    """
    lines: list[str] = []
    try:
        async for line in response.aiter_lines():
            if not line:
                if lines:
                    yield "\n".join(lines)
                    lines = []
            elif line.startswith("data:"):
                lines.append(line[5:].removeprefix(" "))
    except httpx.RequestError as exc:
        translate_transport(exc, deployment, timeout_s)
    if lines:
        yield "\n".join(lines)


def stream_event(data: str, deployment: str) -> dict[str, Any]:
    """One streamed event's JSON object.

    Raises:
        ProviderRetriable: The event is not a JSON object, or is an error (the stream broke
            off): OpenAI's and Gemini's `{"error": ...}`, Anthropic's `error` event.
    """
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProviderRetriable(f"deployment '{deployment}' streamed an event that is not "
                                "JSON", deployment=deployment) from exc
    if not isinstance(event, dict):
        raise ProviderRetriable(f"deployment '{deployment}' streamed an event that is not a "
                                "JSON object", deployment=deployment)
    error = event.get("error")
    if error is not None:
        words = envelope_words(event) or str(error)[:MAX_MESSAGE_CHARS]
        raise ProviderRetriable(f"deployment '{deployment}' broke off its stream: {words}",
                                deployment=deployment)
    return event
