"""One webhook attempt against real sockets: a receiver that drips its answer is cut off."""

from __future__ import annotations

import asyncio
import time

from broker.webhooks.settings import WebhookSettings
from workers.deliver.sender import WebhookSender, new_client


async def test_an_attempt_ends_at_its_deadline_however_slowly_the_receiver_answers() -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        try:
            for _ in range(100_000):  # one byte every 50 ms: each read is quick enough
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = WebhookSettings(webhook_timeout_s=0.5, webhook_allow_hosts="127.0.0.1",
                               webhook_max_response_bytes=100_000)
    try:
        async with new_client(settings) as client:
            started = time.monotonic()
            outcome = await WebhookSender(client, settings).send(
                f"http://127.0.0.1:{port}/hook", {"content-type": "application/json"}, b"{}")
            took = time.monotonic() - started
    finally:
        server.close()
    assert outcome.status_code is None and outcome.error is not None
    assert "timed out" in outcome.error
    assert took < 2.0  # not the 5,000 s the drip would take
