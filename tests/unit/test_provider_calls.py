"""The shared call helpers: every vendor's error envelope, the status table, the headers,
server-sent events and transport errors, as each adapter and the native batch lane see them.

The envelopes are written from the vendors' documented error examples.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from broker.errors import ProviderRejected, ProviderRetriable
from workers.providers.aiohttp_transport import STREAM_RESPONSE
from workers.providers.calls import (
    MAX_MESSAGE_CHARS,
    build_request,
    classify_status,
    open_stream,
    provider_error_message,
    rate_limit_headers,
    read_answer,
    retry_after_s,
    sse_data,
    stream_event,
    translate_transport,
)

OPENAI = {"error": {"message": "Incorrect API key provided: sk-abc***xyz.",
                    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
AZURE = {"error": {"code": "429", "message": "Requests to the ChatCompletions_Create "
                   "Operation have exceeded call rate limit."}}
ANTHROPIC = {"type": "error", "error": {"type": "not_found_error",
                                        "message": "model: claude-9 not found"}}
GOOGLE = {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                    "status": "INVALID_ARGUMENT"}}
OLLAMA = {"error": "model 'llama9' not found, try pulling it first"}


@pytest.mark.parametrize(("body", "words"), [
    (orjson.dumps(OPENAI), "Incorrect API key provided: sk-abc***xyz."),
    (orjson.dumps(AZURE), "Requests to the ChatCompletions_Create Operation have exceeded "
                          "call rate limit."),
    (orjson.dumps(ANTHROPIC), "not_found_error: model: claude-9 not found"),
    (orjson.dumps(GOOGLE), "INVALID_ARGUMENT: API key not valid. Please pass a valid API key."),
    (orjson.dumps([GOOGLE]), "INVALID_ARGUMENT: API key not valid. Please pass a valid API key."),
    (orjson.dumps(OLLAMA), "model 'llama9' not found, try pulling it first"),
    (b"  upstream connect error  ", "upstream connect error"),  # a proxy's plain text
    (b'{"error": null}', '{"error": null}'),
    (b"", "Bad Gateway"),
])
def test_the_providers_own_words_from_each_envelope(body: bytes, words: str) -> None:
    assert provider_error_message(body, "Bad Gateway") == words


def test_long_words_are_cut() -> None:
    said = provider_error_message(orjson.dumps({"error": {"message": "x" * 2000}}), "")
    assert said == "x" * MAX_MESSAGE_CHARS


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # A logging configuration applied earlier in the run can disable this logger.
    logger = logging.getLogger("sluice.providers")
    was_disabled, logger.disabled = logger.disabled, False
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.disabled = was_disabled


def _classified(status: int, body: Any = OPENAI, headers: dict[str, str] | None = None,
                **options: Any) -> ProviderRetriable | ProviderRejected:
    response = httpx.Response(status, json=body, headers=headers,
                              request=httpx.Request("POST", "http://up.test/v1/batches"))
    with pytest.raises((ProviderRetriable, ProviderRejected)) as caught:
        classify_status(response, "eu-1", **options)
    assert isinstance(caught.value, ProviderRetriable | ProviderRejected)
    assert caught.value.status_code == status
    return caught.value


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529, 302, 307])
def test_transient_statuses_and_redirects_are_retriable_with_the_wait(status: int) -> None:
    error = _classified(status, AZURE, {"retry-after": "7", "x-ratelimit-remaining-tokens": "0",
                                        "content-type": "application/json"})
    assert isinstance(error, ProviderRetriable)
    assert error.retry_after_s == 7
    assert error.rate_limit_headers == {"retry-after": "7", "x-ratelimit-remaining-tokens": "0"}
    assert "exceeded call rate limit" in str(error)


@pytest.mark.parametrize("status", [400, 402, 413, 415, 422])
def test_other_client_errors_are_rejected_in_the_providers_words(status: int) -> None:
    error = _classified(status, ANTHROPIC)
    assert isinstance(error, ProviderRejected)
    assert str(error) == f"deployment 'eu-1' answered {status}: not_found_error: model: " \
                         "claude-9 not found"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_deployment_fault_is_retriable_and_keeps_the_words_for_operators(
        status: int, warnings_logged: pytest.LogCaptureFixture) -> None:
    error = _classified(status)
    assert isinstance(error, ProviderRetriable)
    assert "sk-abc" not in str(error)
    assert "an operator must check its API key, upstream model and base_url" in str(error)
    assert "sk-abc***xyz" in warnings_logged.text


def test_a_body_can_make_any_status_a_deployment_fault(
        warnings_logged: pytest.LogCaptureFixture) -> None:
    error = _classified(400, GOOGLE, deployment_fault=True, check="its Google account")
    assert isinstance(error, ProviderRetriable)
    assert str(error).endswith("an operator must check its Google account")
    assert "API key not valid" in warnings_logged.text


def test_a_wait_named_in_the_body_wins_over_the_headers() -> None:
    error = _classified(429, GOOGLE, {"retry-after": "60"}, retry_delay_s=1.5)
    assert isinstance(error, ProviderRetriable) and error.retry_after_s == 1.5


def test_the_call_is_named_when_asked() -> None:
    error = _classified(400, operation="POST /v1/batches", message="bad input file")
    assert str(error) == "deployment 'eu-1' answered 400 to POST /v1/batches: bad input file"


@pytest.mark.parametrize(("headers", "wait"), [
    ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),  # Azure and OpenAI send both
    ({"retry-after": "3"}, 3.0),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # an HTTP date, long past
    ({"retry-after-ms": "soon", "retry-after": "-4"}, 0.0),
    ({"retry-after": "tomorrow"}, None),
    ({}, None),
])
def test_retry_after(headers: dict[str, str], wait: float | None) -> None:
    assert retry_after_s(httpx.Headers(headers)) == wait


def test_only_the_rate_limit_headers_are_kept() -> None:
    headers = httpx.Headers({"anthropic-ratelimit-tokens-remaining": "10", "x-request-id": "r",
                             "x-ratelimit-reset-requests": "1s", "retry-after": "1"})
    assert rate_limit_headers(headers) == {"anthropic-ratelimit-tokens-remaining": "10",
                                           "x-ratelimit-reset-requests": "1s",
                                           "retry-after": "1"}


def test_a_request_carries_its_length_and_every_phases_timeout() -> None:
    url = httpx.URL("http://up.test/v1/chat/completions")
    request = build_request("POST", url, [(b"host", b"up.test")], b"{}", 2.5, stream=True)
    assert request.headers["content-length"] == "2"
    assert request.extensions["timeout"] == httpx.Timeout(2.5).as_dict()
    assert request.extensions[STREAM_RESPONSE] is True
    download = build_request("GET", url, [(b"host", b"up.test")], None, 2.5)
    assert "content-length" not in download.headers and STREAM_RESPONSE not in download.extensions


async def _events(*chunks: bytes) -> list[str]:
    return [data async for data in sse_data(httpx.Response(200, content=b"".join(chunks)),
                                            "eu-1", 5)]


async def test_server_sent_event_data() -> None:
    assert await _events(b": keep-alive\n\n", b"event: message_start\ndata: {\"a\":\n",
                         b"data: 1}\n\n", b"data:[DONE]") == ['{"a":\n1}', "[DONE]"]


class _BrokenStream(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        raise httpx.RemoteProtocolError("peer closed connection")


async def test_a_stream_that_breaks_off_is_retriable() -> None:
    seen: list[str] = []
    with pytest.raises(ProviderRetriable, match="unreachable: RemoteProtocolError"):
        async for data in sse_data(httpx.Response(200, stream=_BrokenStream()), "eu-1", 5):
            seen.append(data)
    assert seen == ["{}"]


@pytest.mark.parametrize(("data", "said"), [
    (orjson.dumps(ANTHROPIC), "broke off its stream: not_found_error: model: claude-9"),
    (orjson.dumps({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}),
     "broke off its stream: UNAVAILABLE: overloaded"),
    (b'{"error": {"message": "server_error"}}', "broke off its stream: server_error"),
    (b"{not json", "not JSON"),
    (b"[1]", "not a JSON object"),
])
def test_a_streamed_error_or_garbage_is_retriable(data: bytes, said: str) -> None:
    with pytest.raises(ProviderRetriable, match=said):
        stream_event(data.decode(), "eu-1")


def test_a_streamed_event_is_its_object() -> None:
    assert stream_event('{"type": "ping", "error": null}', "eu-1") == {"type": "ping",
                                                                      "error": None}


@pytest.mark.parametrize(("error", "said"), [
    (httpx.ReadTimeout("read timed out"), "deployment 'eu-1' timed out after 0.5s"),
    (TimeoutError(), "deployment 'eu-1' timed out after 0.5s"),
    (httpx.ConnectError("refused"), "deployment 'eu-1' unreachable: ConnectError: refused"),
])
def test_transport_errors_are_retriable(error: Exception, said: str) -> None:
    assert isinstance(error, httpx.RequestError | TimeoutError)
    with pytest.raises(ProviderRetriable) as caught:
        translate_transport(error, "eu-1", 0.5)
    assert str(caught.value) == said and caught.value.__cause__ is error


async def test_an_unreachable_provider_is_retriable_whether_read_or_streamed() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    request = build_request("GET", httpx.URL("http://up.test/"), [], None, 1)
    for send in (read_answer, open_stream):
        with pytest.raises(ProviderRetriable, match="unreachable"):
            await send(httpx.MockTransport(refuse), request, "eu-1", 1)


async def test_a_refused_stream_is_read_whole_so_its_words_can_be_classified() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(
        400, stream=httpx.ByteStream(orjson.dumps(ANTHROPIC))))
    response = await open_stream(
        transport, build_request("POST", httpx.URL("http://up.test/"), [], b"{}", 1, stream=True),
        "eu-1", 1)
    assert response.is_closed and response.json() == ANTHROPIC
