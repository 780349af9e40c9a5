"""Provider transports against real sockets: framing, reuse, failures, timeouts, TLS,
proxies, HTTP/2 and streamed bodies."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import uvicorn

from broker.config import DeploymentConfig
from broker.errors import ConfigError
from schemas import ChatCompletionRequest
from simulator import SimulatorSettings, create_simulator_app
from workers.providers import OpenAICompatibleProvider, ProviderTransports, ProxyEnvironment
from workers.providers.aiohttp_transport import STREAM_RESPONSE

# What a scripted server does with one request on one connection; returning False closes
# the connection after it.
Script = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[bool]]


def _response(body: bytes = b'{"ok":true}', *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += b"".join(line + b"\r\n" for line in extra)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def _answer(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(_response(b'{"ok":true}', b"X-Request-Id: up-1"))
    return True


class ScriptedServer:
    """A loopback HTTP/1.1 server whose every answer a test scripts."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.script(len(self.requests), request, writer):
                    return
                await writer.drain()
        finally:
            writer.close()


def _post(url: str, content: bytes = b'{"q":1}', **timeouts: float) -> httpx.Request:
    extensions = {"timeout": httpx.Timeout(5.0, **timeouts).as_dict()}  # type: ignore[arg-type]
    return httpx.Request("POST", url, content=content, extensions=extensions)


def _deployment(base_url: str = "http://127.0.0.1:9/v1", **config: object) -> DeploymentConfig:
    return DeploymentConfig.model_validate(
        {"provider": "openai", "model": "gpt-4o-mini", "base_url": base_url, **config})


@pytest.fixture
async def transports() -> AsyncIterator[ProviderTransports]:
    async with ProviderTransports(max_connections=8, proxies=ProxyEnvironment()) as built:
        yield built


@pytest.fixture
def transport(transports: ProviderTransports) -> httpx.AsyncBaseTransport:
    """The HTTP/1.1 route every plain deployment shares."""
    return transports.for_deployment("d", _deployment())


async def test_posts_the_request_and_reads_status_headers_and_body(
    transport: httpx.AsyncBaseTransport,
) -> None:
    async with ScriptedServer(_answer) as server:
        response = await transport.handle_async_request(
            _post(server.url + "/v1/chat/completions?x=1", b'{"hello":"world"}'))
        await response.aread()
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "up-1"
    assert response.json() == {"ok": True}
    sent = server.requests[0]
    assert sent.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in sent.lower()
    assert b"\r\ncontent-length: 17\r\n" in sent.lower()
    assert sent.endswith(b'\r\n\r\n{"hello":"world"}')


async def test_sequential_calls_share_one_connection(transport: httpx.AsyncBaseTransport) -> None:
    async with ScriptedServer(_answer) as server:
        for _ in range(3):
            response = await transport.handle_async_request(_post(server.url))
            assert response.status_code == 200
    assert (server.connections, len(server.requests)) == (1, 3)


async def test_concurrent_calls_get_their_own_connections_and_keep_them(
    transport: httpx.AsyncBaseTransport,
) -> None:
    async def slow(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        return await _answer(0, b"", writer)

    async with ScriptedServer(slow) as server:
        for _ in range(2):
            responses = await asyncio.gather(
                *(transport.handle_async_request(_post(server.url)) for _ in range(5)))
            assert [r.status_code for r in responses] == [200] * 5
    assert (server.connections, len(server.requests)) == (5, 10)


@pytest.mark.parametrize(("answer", "keep_open", "body", "connections"), [
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", True, b"hello world", 1,
                 id="chunked, reassembled, connection kept"),
    pytest.param(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", False,
                 b"all of it", 2, id="ended by the close, connection dropped"),
])
async def test_bodies_without_a_content_length(
    transport: httpx.AsyncBaseTransport,
    answer: bytes, keep_open: bool, body: bytes, connections: int,
) -> None:
    async def respond(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer)
        return keep_open

    async with ScriptedServer(respond) as server:
        first = await transport.handle_async_request(_post(server.url))
        second = await transport.handle_async_request(_post(server.url))
    assert first.content == second.content == body
    assert server.connections == connections


async def test_connection_close_from_the_server_is_honoured(
    transport: httpx.AsyncBaseTransport,
) -> None:
    async def close_after(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_response(b"{}", b"Connection: close"))
        return True  # the server would keep it; the client must not

    async with ScriptedServer(close_after) as server:
        for _ in range(2):
            assert (await transport.handle_async_request(_post(server.url))).content == b"{}"
    assert server.connections == 2


async def test_a_keepalive_connection_the_server_dropped_fails_that_call_only(
    transport: httpx.AsyncBaseTransport,
) -> None:
    async def drop_second(number: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if number == 2:
            return False  # read the request, closed without a byte: an idle-timeout race
        return await _answer(number, b"", writer)

    async with ScriptedServer(drop_second) as server:
        await transport.handle_async_request(_post(server.url))
        # A POST is not resent on its own: the provider may have acted on it. The adapter
        # makes this a retriable failure and the worker decides.
        with pytest.raises(httpx.TransportError):
            await transport.handle_async_request(_post(server.url))
        response = await transport.handle_async_request(_post(server.url))
    assert response.status_code == 200
    assert (server.connections, len(server.requests)) == (2, 3)


@pytest.mark.parametrize(("answer", "keep_open", "error"), [
    # Cut short, then closed: a fresh connection, so the request is not sent again.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial", False, "Payload"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", True, "Invalid|Bad|Disconnected"),
], ids=["cut-short", "garbage"])
async def test_a_broken_response_is_a_protocol_error_and_not_resent(
    transport: httpx.AsyncBaseTransport, answer: bytes, keep_open: bool, error: str,
) -> None:
    async def broken(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer)
        return keep_open

    async with ScriptedServer(broken) as server:
        with pytest.raises(httpx.ReadError, match=error):
            await transport.handle_async_request(_post(server.url))
    assert len(server.requests) == 1


async def test_a_silent_server_is_a_read_timeout(transport: httpx.AsyncBaseTransport) -> None:
    async def silent(_: int, __: bytes, ___: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with ScriptedServer(silent) as server:
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(_post(server.url, read=0.2))


async def test_a_closed_port_is_a_connect_error(transport: httpx.AsyncBaseTransport) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(_post(f"http://127.0.0.1:{port}/"))


async def test_calls_beyond_max_connections_wait_for_a_slot() -> None:
    transports = ProviderTransports(max_connections=1, proxies=ProxyEnvironment())
    async def hold(number: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if number == 1:
            await asyncio.sleep(0.3)
        return await _answer(number, b"", writer)

    transport = transports.for_deployment("d", _deployment())
    async with transports, ScriptedServer(hold) as server:
        first = asyncio.create_task(transport.handle_async_request(_post(server.url)))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.TimeoutException):
            await transport.handle_async_request(_post(server.url, pool=0.05))
        second = await transport.handle_async_request(_post(server.url, pool=2))
        assert (await first).status_code == second.status_code == 200
    assert server.connections == 1


async def test_a_cancelled_call_does_not_hand_its_connection_on(
    transport: httpx.AsyncBaseTransport,
) -> None:
    async def late_first(number: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if number == 1:
            await asyncio.sleep(0.3)
        writer.write(_response(b'{"n":%d}' % number))
        return True

    async with ScriptedServer(late_first) as server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await transport.handle_async_request(_post(server.url))
        response = await transport.handle_async_request(_post(server.url))
    # The first answer, arriving late on the first connection, never reaches the second
    # call: it went out on a connection of its own.
    assert response.content == b'{"n":2}'
    assert server.connections == 2


async def test_a_streamed_response_arrives_chunk_by_chunk(
    transport: httpx.AsyncBaseTransport,
) -> None:
    release = asyncio.Event()

    async def drip(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: one\r\n")
        await writer.drain()
        await release.wait()  # the rest only once the client has read the first part
        writer.write(b"9\r\ndata: two\r\n0\r\n\r\n")
        return True

    async with ScriptedServer(drip) as server:
        request = _post(server.url)
        request.extensions[STREAM_RESPONSE] = True
        response = await transport.handle_async_request(request)
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"data: one"
        release.set()
        assert b"".join([chunk async for chunk in chunks]) == b"data: two"
        await response.aclose()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


async def test_https_trusts_the_deployments_own_ca_bundle_and_nothing_else(
    tmp_path: Path,
) -> None:
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(7)
        writer.write(_response(b'{"tls":true}'))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}/v1"
    try:
        async with ProviderTransports(max_connections=4, proxies=ProxyEnvironment()) as built:
            private = built.for_deployment("private", _deployment(url, ca_bundle=str(cert)))
            response = await private.handle_async_request(_post(url))
            await response.aread()
            assert response.json() == {"tls": True}
            public = built.for_deployment("public", _deployment(url))
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await public.handle_async_request(_post(url))
            assert built.routes == 2  # the private CA got a connection pool of its own
    finally:
        server.close()


def test_an_unreadable_ca_bundle_is_a_config_error_naming_the_deployment(
    tmp_path: Path,
) -> None:
    transports = ProviderTransports(max_connections=1, proxies=ProxyEnvironment())
    with pytest.raises(ConfigError, match=r"deployments\.eu-1: cannot load its TLS files"):
        transports.for_deployment(
            "eu-1", _deployment("https://x.invalid/v1", ca_bundle=str(tmp_path / "nope.pem")))


def test_deployments_travelling_the_same_way_share_one_pool(
    transports: ProviderTransports,
) -> None:
    first = transports.for_deployment("a", _deployment("http://one.invalid/v1"))
    second = transports.for_deployment("b", _deployment("https://two.invalid/v1"))
    proxied = transports.for_deployment("c", _deployment(proxy="http://proxy.invalid:3128"))
    assert first is second
    assert proxied is not first
    assert transports.routes == 2


@pytest.mark.parametrize(("environ", "url", "expected"), [
    ({"HTTPS_PROXY": "http://p:1"}, "https://api.openai.com/v1", "http://p:1"),
    ({"HTTPS_PROXY": "http://p:1"}, "http://vllm:8000/v1", None),
    ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"},
     "https://api.openai.com/v1", "http://lower:1"),
    ({"ALL_PROXY": "http://all:1"}, "http://vllm:8000/v1", "http://all:1"),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "localhost,.corp.example"},
     "https://llm.corp.example/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "corp.example"},
     "https://corp.example:8443/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "corp.example"},
     "https://api.openai.com/v1", "http://p:1"),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://api.openai.com/v1", None),
], ids=["https", "http-not-covered", "lower-case-first", "all-proxy", "no-proxy-suffix",
        "no-proxy-port", "no-proxy-other-host", "no-proxy-star"])
def test_the_proxy_environment_is_read_as_curl_reads_it(
    environ: dict[str, str], url: str, expected: str | None,
) -> None:
    assert ProxyEnvironment.from_environ(environ).proxy_for(httpx.URL(url)) == expected


@pytest.mark.parametrize(("deployment_proxy", "no_proxy", "through_proxy"), [
    (None, "", True),
    (None, "upstream.invalid", False),
    ("direct", "", False),
], ids=["environment", "no-proxy", "direct"])
async def test_calls_go_through_the_environments_proxy_unless_exempted(
    deployment_proxy: str | None, no_proxy: str, through_proxy: bool,
) -> None:
    async with ScriptedServer(_answer) as proxy:
        environ = {"HTTP_PROXY": proxy.url, "NO_PROXY": no_proxy}
        config = _deployment("http://upstream.invalid/v1", proxy=deployment_proxy)
        async with ProviderTransports(
            max_connections=2, proxies=ProxyEnvironment.from_environ(environ),
        ) as built:
            transport = built.for_deployment("d", config)
            if through_proxy:
                response = await transport.handle_async_request(
                    _post("http://upstream.invalid/v1/chat/completions"))
                assert response.status_code == 200
            else:
                with pytest.raises(httpx.ConnectError):  # straight to a host that does not exist
                    await transport.handle_async_request(
                        _post("http://upstream.invalid/v1/chat/completions"))
    if through_proxy:
        # A forward proxy is sent the absolute URL of the upstream.
        assert proxy.requests[0].startswith(
            b"POST http://upstream.invalid/v1/chat/completions HTTP/1.1\r\n")
    else:
        assert proxy.requests == []


async def test_a_deployments_own_proxy_wins_over_the_environment() -> None:
    async with ScriptedServer(_answer) as chosen, ScriptedServer(_answer) as environment:
        proxies = ProxyEnvironment.from_environ({"HTTP_PROXY": environment.url})
        async with ProviderTransports(max_connections=2, proxies=proxies) as built:
            transport = built.for_deployment(
                "d", _deployment("http://upstream.invalid/v1", proxy=chosen.url))
            response = await transport.handle_async_request(_post("http://upstream.invalid/v1"))
    assert response.status_code == 200
    assert len(chosen.requests) == 1
    assert environment.requests == []


async def test_http2_is_negotiated_with_an_upstream_that_offers_it(tmp_path: Path) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    cert, key = _self_signed(tmp_path)
    config = Config()
    config.certfile, config.keyfile = str(cert), str(key)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.loglevel = "WARNING"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.bind = [f"127.0.0.1:{port}"]
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(  # type: ignore[arg-type]
        create_simulator_app(SimulatorSettings()), config, shutdown_trigger=stop.wait))
    try:
        base_url = f"https://localhost:{port}/v1"
        async with ProviderTransports(max_connections=4, proxies=ProxyEnvironment()) as built:
            deployment = _deployment(base_url, ca_bundle=str(cert), http2=True)
            transport = built.for_deployment("h2", deployment)
            for _ in range(50):  # hypercorn binds in the background
                try:
                    probe_response = await transport.handle_async_request(
                        httpx.Request("GET", f"https://localhost:{port}/health"))
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            assert probe_response.extensions["http_version"] == b"HTTP/2"
            adapter = OpenAICompatibleProvider(transport, "h2", deployment)
            body = ChatCompletionRequest.model_validate(
                {"model": "m", "messages": [{"role": "user", "content": "Say hi."}]})
            answers = await asyncio.gather(*(adapter.complete(body, timeout_s=5) for _ in range(4)))
        assert {a.completion.model for a in answers} == {"gpt-4o-mini"}
    finally:
        stop.set()
        await serving


async def test_the_http_adapter_over_it_against_the_real_simulator_server(
    transports: ProviderTransports,
) -> None:
    listening = socket.create_server(("127.0.0.1", 0))  # accepts before uvicorn starts
    port = listening.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        create_simulator_app(SimulatorSettings()), log_level="warning", http="httptools"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        deployment = _deployment(f"http://127.0.0.1:{port}/v1")
        adapter = OpenAICompatibleProvider(
            transports.for_deployment("sim", deployment), "sim", deployment)
        body = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "Say hi."}]})
        answers = await asyncio.gather(*(adapter.complete(body, timeout_s=5) for _ in range(8)))
        assert {a.completion.model for a in answers} == {"gpt-4o-mini"}
        assert len({a.completion.choices[0].message.content for a in answers}) == 1
        assert all(a.completion.usage and a.completion.usage.prompt_tokens > 0 for a in answers)
    finally:
        server.should_exit = True
        await serving
