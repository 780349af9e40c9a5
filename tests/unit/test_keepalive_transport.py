"""KeepAliveTransport against real sockets: framing, reuse, failures, timeouts, TLS."""

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
from schemas import ChatCompletionRequest
from simulator import SimulatorSettings, create_simulator_app
from workers.providers import KeepAliveTransport, OpenAICompatibleProvider

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


@pytest.fixture
async def transport() -> AsyncIterator[KeepAliveTransport]:
    async with KeepAliveTransport(max_connections=8) as keepalive:
        yield keepalive


async def test_posts_the_request_and_reads_status_headers_and_body(
    transport: KeepAliveTransport,
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


async def test_sequential_calls_share_one_connection(transport: KeepAliveTransport) -> None:
    async with ScriptedServer(_answer) as server:
        for _ in range(3):
            response = await transport.handle_async_request(_post(server.url))
            assert response.status_code == 200
    assert (server.connections, len(server.requests)) == (1, 3)


async def test_concurrent_calls_get_their_own_connections_and_keep_them(
    transport: KeepAliveTransport,
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
    transport: KeepAliveTransport, answer: bytes, keep_open: bool, body: bytes, connections: int,
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
    transport: KeepAliveTransport,
) -> None:
    async def close_after(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(_response(b"{}", b"Connection: close"))
        return True  # the server would keep it; the client must not

    async with ScriptedServer(close_after) as server:
        for _ in range(2):
            assert (await transport.handle_async_request(_post(server.url))).content == b"{}"
    assert server.connections == 2


async def test_a_keepalive_connection_the_server_dropped_is_replaced_once(
    transport: KeepAliveTransport,
) -> None:
    async def drop_second(number: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if number == 2:
            return False  # read the request, closed without a byte: an idle-timeout race
        return await _answer(number, b"", writer)

    async with ScriptedServer(drop_second) as server:
        await transport.handle_async_request(_post(server.url))
        response = await transport.handle_async_request(_post(server.url))
    assert response.status_code == 200
    assert (server.connections, len(server.requests)) == (2, 3)


@pytest.mark.parametrize(("answer", "keep_open", "error"), [
    # Cut short, then closed: a fresh connection, so the request is not sent again.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial", False, "complete response"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", True, "malformed response"),
], ids=["cut-short", "garbage"])
async def test_a_broken_response_is_a_protocol_error_and_not_resent(
    transport: KeepAliveTransport, answer: bytes, keep_open: bool, error: str,
) -> None:
    async def broken(_: int, __: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer)
        return keep_open

    async with ScriptedServer(broken) as server:
        with pytest.raises(httpx.RemoteProtocolError, match=error):
            await transport.handle_async_request(_post(server.url))
    assert len(server.requests) == 1


async def test_a_silent_server_is_a_read_timeout(transport: KeepAliveTransport) -> None:
    async def silent(_: int, __: bytes, ___: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with ScriptedServer(silent) as server:
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(_post(server.url, read=0.2))


async def test_a_closed_port_is_a_connect_error(transport: KeepAliveTransport) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(_post(f"http://127.0.0.1:{port}/"))


async def test_calls_beyond_max_connections_wait_for_a_slot() -> None:
    async def hold(number: int, _: bytes, writer: asyncio.StreamWriter) -> bool:
        if number == 1:
            await asyncio.sleep(0.3)
        return await _answer(number, b"", writer)

    async with KeepAliveTransport(max_connections=1) as transport, ScriptedServer(hold) as server:
        first = asyncio.create_task(transport.handle_async_request(_post(server.url)))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(_post(server.url, pool=0.05))
        second = await transport.handle_async_request(_post(server.url, pool=2))
        assert (await first).status_code == second.status_code == 200
    assert server.connections == 1


async def test_a_cancelled_call_does_not_hand_its_connection_on(
    transport: KeepAliveTransport,
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


async def test_head_requests_are_refused_with_a_clear_error(
    transport: KeepAliveTransport,
) -> None:
    with pytest.raises(httpx.UnsupportedProtocol, match="HEAD"):
        await transport.handle_async_request(httpx.Request("HEAD", "http://127.0.0.1:9/"))


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


async def test_https_verifies_the_servers_certificate(tmp_path: Path) -> None:
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
        trusting = ssl.create_default_context(cafile=str(cert))
        async with KeepAliveTransport(ssl_context=trusting) as transport:
            response = await transport.handle_async_request(_post(url))
            assert response.json() == {"tls": True}
        async with KeepAliveTransport() as transport:  # httpx's default trust
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await transport.handle_async_request(_post(url))
    finally:
        server.close()


async def test_the_http_adapter_over_it_against_the_real_simulator_server() -> None:
    listening = socket.create_server(("127.0.0.1", 0))  # accepts before uvicorn starts
    port = listening.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        create_simulator_app(SimulatorSettings()), log_level="warning", http="httptools"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        async with KeepAliveTransport(max_connections=4) as transport:
            adapter = OpenAICompatibleProvider(transport, "sim", DeploymentConfig(
                provider="openai", model="gpt-4o-mini", base_url=f"http://127.0.0.1:{port}/v1"))
            body = ChatCompletionRequest.model_validate(
                {"model": "m", "messages": [{"role": "user", "content": "Say hi."}]})
            answers = await asyncio.gather(
                *(adapter.complete(body, timeout_s=5) for _ in range(8)))
        assert {a.completion.model for a in answers} == {"gpt-4o-mini"}
        assert len({a.completion.choices[0].message.content for a in answers}) == 1
        assert all(a.completion.usage and a.completion.usage.prompt_tokens > 0 for a in answers)
    finally:
        server.should_exit = True
        await serving
