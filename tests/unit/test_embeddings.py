"""Embeddings: the request contract, estimates, the adapter and the simulator."""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from broker.batches.lines import InputLine, parse_line
from broker.config import DeploymentConfig, parse_config
from broker.estimates import Estimator
from broker.tokens import encoding_for_model
from schemas import EmbeddingRequest, EmbeddingResponse
from simulator import SimulatorSettings, create_simulator_app
from simulator.embeddings import vector
from workers.providers import OpenAICompatibleProvider


def _request(**fields: Any) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"model": "e", **fields})


def test_every_input_shape_is_counted() -> None:
    count = encoding_for_model("text-embedding-3-small").count
    config = parse_config({"models": {"e": {"kind": "embedding", "deployments": ["d"]}},
                           "deployments": {"d": {"provider": "simulated",
                                                 "model": "text-embedding-3-small"}}})
    estimator = Estimator(config)
    for body, tokens in [
        (_request(input="hello world"), count("hello world")),
        (_request(input=["a b", "c"]), count("a b") + count("c")),
        (_request(input=[1, 2, 3]), 3),
        (_request(input=[[1, 2], [3]]), 3),
    ]:
        estimate = estimator.for_call(body, "e", "d")
        assert (estimate.prompt_tokens, estimate.output_tokens) == (tokens, 0)
    with pytest.raises(ValidationError, match="empty"):
        _request(input=[])


async def test_the_adapter_forwards_everything_and_returns_the_list_whole() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    answer = {"object": "list", "model": "text-embedding-3-small",
              "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
              "usage": {"prompt_tokens": 2, "total_tokens": 2}}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), orjson.loads(request.content)))
        return httpx.Response(200, json=answer)

    adapter = OpenAICompatibleProvider(httpx.MockTransport(handler), "d", DeploymentConfig(
        provider="openai", model="text-embedding-3-small", base_url="http://up/v1"))
    response = await adapter.embed(
        _request(input="hi", dimensions=2, encoding_format="float", user="u"), timeout_s=5)
    assert seen == [("http://up/v1/embeddings", {
        "model": "text-embedding-3-small", "input": "hi", "dimensions": 2,
        "encoding_format": "float", "user": "u"})]
    assert isinstance(response.completion, EmbeddingResponse)
    assert response.completion.model_dump(mode="json", exclude_none=True) == answer


async def test_the_simulator_embeds_deterministically_in_both_encodings() -> None:
    app = create_simulator_app(SimulatorSettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://sim") as client:
        floats = (await client.post("/v1/embeddings", json={
            "model": "text-embedding-3-small", "input": ["x", "y"]})).json()
        packed = (await client.post("/v1/embeddings", json={
            "model": "text-embedding-3-large", "input": "x", "encoding_format": "base64"})).json()
        refused = await client.post("/v1/embeddings", json={"model": "m", "input": []})
    assert [len(item["embedding"]) for item in floats["data"]] == [1536, 1536]
    assert floats["data"][0]["embedding"] == vector("x", 1536)
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert len(raw) == 3072 * 4
    assert struct.unpack("<3072f", raw)[0] == pytest.approx(vector("x", 3072)[0], rel=1e-6)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input"


def test_batch_lines_of_the_embeddings_endpoint() -> None:
    line = orjson.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                         "body": {"model": "e", "input": "text"}})
    parsed = parse_line(1, line, "/v1/embeddings", frozenset({"e"}))
    assert isinstance(parsed, InputLine) and isinstance(parsed.body, EmbeddingRequest)
    chat_body = orjson.dumps({"custom_id": "b", "method": "POST", "url": "/v1/embeddings",
                              "body": {"model": "e", "messages": []}})
    refused = parse_line(2, chat_body, "/v1/embeddings", frozenset({"e"}))
    assert isinstance(refused, InputLine) and refused.body is None
    assert "input" in (refused.problem or "")
