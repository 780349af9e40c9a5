"""A client that leaves mid-stream cancels the provider call, which is billed for what it made.

Ingress serves on a real socket (uvicorn, as in production) so the client can really go
away; Kafka is the in-memory port and the provider a slow in-process stream.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import httpx
import uvicorn

from broker.batches.settings import BatchSettings
from broker.config import parse_config
from broker.kafka import TopicPartition, decode, new_consumer, partition_ids, read_present
from broker.settings import IngressSettings, KafkaSettings, WorkerSettings
from broker.webhooks.settings import WebhookSettings
from ingress.app import create_app
from ingress.hot_routes import serve
from ingress.services import IngressServices
from schemas import ChatCompletionRequest, InferenceResult, RequestStatus, Topics, UsageEvent
from schemas.streaming import stream_chunks
from simulator.answers import simulate_completion
from tests.unit.test_pipeline_in_memory import KEY, _NoLedger, _OneKey
from workers.inference import InferencePool
from workers.inference.results import NoResultsOfRecord
from workers.providers import ProviderResponse
from workers.providers.base import ChunkSink


class _SlowStream:
    """Streams a long answer, one chunk every 50 ms; counts what it got to send."""

    name = "openai"
    deployment = "slow"

    def __init__(self) -> None:
        self.sent = 0
        self.stopped = asyncio.Event()

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float) -> ProviderResponse:
        raise AssertionError("streamed requests must stream")

    async def stream(self, body: ChatCompletionRequest, *, timeout_s: float,
                     on_chunk: ChunkSink) -> ProviderResponse:
        completion = simulate_completion(body, upstream_model="gpt-4o-mini", output_tokens=200)
        try:
            for chunk in stream_chunks(completion, include_usage=True):
                await on_chunk(chunk)
                self.sent += 1
                await asyncio.sleep(0.05)
        finally:
            self.stopped.set()
        raise AssertionError("the client left; this stream should have been stopped")

    async def embed(self, body: Any, *, timeout_s: float) -> ProviderResponse:
        raise AssertionError("not an embedding model")


async def _read(kafka: KafkaSettings, topic: str) -> list[Any]:
    consumer = new_consumer(kafka, client_id="test", group_id=None)
    consumer.assign([TopicPartition(topic, p) for p in await partition_ids(kafka, topic)])
    await consumer.start()
    try:
        await consumer.seek_to_beginning()
        return [record async for record in read_present(consumer, list(consumer.assignment()))]
    finally:
        await consumer.stop()


async def test_leaving_mid_stream_cancels_the_call_and_bills_what_was_generated() -> None:
    kafka = KafkaSettings(kafka_bootstrap=f"memory://{uuid.uuid4().hex}", topic_partitions=2)
    config = parse_config({"models": {"m": {"deployments": ["slow"]}}, "deployments": {
        "slow": {"provider": "simulated", "model": "gpt-4o-mini"}}})
    provider = _SlowStream()
    stop = asyncio.Event()
    pool = InferencePool(kafka, WorkerSettings(), config, ["m"], {"slow": provider},
                         NoResultsOfRecord())
    worker = asyncio.create_task(pool.run(stop))
    app = create_app(IngressServices(settings=IngressSettings(sync_timeout_s=10), kafka=kafka,
                                     config=config, api_keys=_OneKey(), requests=_NoLedger(),
                                     webhooks=WebhookSettings(), batches=BatchSettings()))
    listening = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(serve(app), log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    url = f"http://127.0.0.1:{listening.getsockname()[1]}/v1/chat/completions"
    try:
        # The socket listens already: the request waits in its backlog until uvicorn (and
        # the app's lifespan, which connects to Kafka) has started.
        body = {"model": "m", "stream": True,
                "messages": [{"role": "user", "content": "Tell me a long story."}]}
        async with httpx.AsyncClient(timeout=10) as client, client.stream(
                "POST", url, json=body, headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            # Leave once the first words have arrived (the opening chunk has none).
            while '"content":"' not in (line := await anext(lines)) or '"content":""' in line:
                pass
            request_id = response.headers["x-request-id"]
        # The connection is gone: the worker must stop the provider well before its end.
        await asyncio.wait_for(provider.stopped.wait(), 10)
        assert provider.sent < 50
        topics = Topics(kafka.topic_prefix)
        for _ in range(100):
            results = [decode(InferenceResult, r) for r in await _read(kafka, topics.results)]
            if results:
                break
            await asyncio.sleep(0.05)
        assert [(r.request_id, r.status) for r in results] == [
            (request_id, RequestStatus.CANCELLED)]
        (usage,) = [decode(UsageEvent, r) for r in await _read(kafka, topics.usage)]
        assert usage.request_id == request_id
        assert usage.input_tokens > 0 and usage.output_tokens > 0  # what it generated
    finally:
        server.should_exit = True
        await serving
        stop.set()
        await asyncio.wait_for(worker, 20)
