"""all-MiniLM-L6-v2 in numpy: the reference vector, and similarity that means something."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
from starlette.requests import Request

from broker.caching.embedding import SentenceEmbedder
from broker.config import parse_config
from broker.errors import ConfigError
from ingress.cache import ResponseCache, cache_directives
from ingress.services import Principal
from schemas import ChatCompletionRequest


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder.load()


def test_the_vector_of_hello_world_is_the_reference_implementations(
        embedder: SentenceEmbedder) -> None:
    # FastEmbed's canonical values for this model (mean pooling, normalised): the first
    # five dimensions of "hello world" (its tests/test_text_onnx_embeddings.py).
    vectors = embedder.embed(["hello world", "flag embedding"])
    assert vectors.shape == (2, 384)
    assert np.allclose(vectors[0, :5], [-0.034478, 0.03102, 0.00673, 0.02611, -0.039362],
                       atol=1e-4)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_score_high_and_unrelated_ones_low(
        embedder: SentenceEmbedder) -> None:
    # The model card's example pair: the same scene in other words, and another scene.
    food, bread, horse = embedder.embed(["A man is eating food.",
                                         "A man is eating a piece of bread.",
                                         "A man is riding a horse."])
    assert 0.7 < float(food @ bread) < 0.8
    assert float(food @ horse) < 0.3
    assert float(bread @ horse) < 0.3


def test_a_batch_embeds_each_text_as_alone(embedder: SentenceEmbedder) -> None:
    # Padding the shorter text must not change its vector.
    alone = embedder.embed(["Short."])[0]
    batched = embedder.embed(["Short.", "A much longer sentence than the short one here."])[0]
    assert np.allclose(alone, batched, atol=1e-5)


def test_cache_control_directives() -> None:
    assert cache_directives(None) == frozenset()
    assert cache_directives("No-Cache") == {"no-cache"}
    assert cache_directives("max-age=0, no-store,  no-cache") == {"max-age", "no-store",
                                                                 "no-cache"}


def _request(headers: dict[str, str]) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


CONFIG: dict[str, Any] = {
    "models": {"plain": {"deployments": ["sim"]},
               "cached": {"deployments": ["sim"], "cache": {"ttl_s": 60}},
               "semantic": {"deployments": ["sim"],
                            "cache": {"ttl_s": 60, "semantic": {"threshold": 0.9}}}},
    "deployments": {"sim": {"provider": "simulated", "model": "x"}},
}


class NoDatabase:
    """An engine stand-in for lookups that must never reach the database."""


async def test_a_miss_carries_the_ticket_and_its_vector_computed_off_the_loop() -> None:
    cache = ResponseCache(parse_config(CONFIG), NoDatabase())  # type: ignore[arg-type]
    principal = Principal(tenant="acme", api_key_id="key_1")
    body = ChatCompletionRequest.model_validate(
        {"model": "semantic", "messages": [{"role": "user", "content": "What is a sluice?"}]})
    loop_thread = threading.get_ident()
    seen: list[int] = []
    embedder = SentenceEmbedder.load()
    original = embedder.embed

    def spy(texts: Any) -> Any:
        seen.append(threading.get_ident())
        return original(texts)

    embedder.embed = spy  # type: ignore[method-assign]
    cache._embedder = embedder
    # Not waiting for the answer: nothing is looked up, the ticket is still made.
    lookup = await cache.lookup(_request({}), principal, body, answer=False)
    assert lookup.response is None and lookup.cached_model
    assert lookup.ticket is not None and lookup.ticket.embedding is not None
    assert lookup.ticket.rest_hash is not None and lookup.ticket.ttl_s == 60
    assert seen and all(thread != loop_thread for thread in seen)
    # no-store: nothing to keep, so no ticket.
    lookup = await cache.lookup(_request({"Cache-Control": "no-store"}), principal, body,
                                answer=False)
    assert lookup.ticket is None and lookup.cached_model
    # A model without `cache:` is not the cache's business at all.
    plain = body.model_copy(update={"model": "plain"})
    assert await cache.lookup(_request({}), principal, plain, answer=True) == \
        type(lookup)()
    # A key that may not use the model gets no cache either (admission answers 404).
    limited = Principal(tenant="acme", api_key_id="key_2", models=frozenset({"plain"}))
    assert (await cache.lookup(_request({}), limited, body, answer=False)).ticket is None
    await cache.close()
    await asyncio.sleep(0)


async def test_without_the_model_installed_the_exact_cache_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def missing(directory: Any = None) -> SentenceEmbedder:
        raise ConfigError("the semantic cache needs the all-MiniLM-L6-v2 model")

    monkeypatch.setattr(SentenceEmbedder, "load", staticmethod(missing))
    cache = ResponseCache(parse_config(CONFIG), NoDatabase())  # type: ignore[arg-type]
    body = ChatCompletionRequest.model_validate(
        {"model": "semantic", "messages": [{"role": "user", "content": "What is a sluice?"}]})
    for _ in range(2):  # logged once, not per request
        lookup = await cache.lookup(_request({}), Principal(tenant="acme", api_key_id="k"),
                                    body, answer=False)
        assert lookup.ticket is not None and lookup.ticket.embedding is None
        assert lookup.ticket.rest_hash is None
    assert [r.message for r in caplog.records].count(
        "semantic cache off: the semantic cache needs the all-MiniLM-L6-v2 model") == 1
    await cache.close()
