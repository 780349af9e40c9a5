"""The response cache's in-process parts: the answer LRU (TTL, bound) and the vector index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from broker.caching.answers import AnswerLRU, CachedAnswer
from broker.caching.index import (
    ScopeVectors,
    SemanticIndex,
    StoredVector,
    vector_from_bytes,
    vector_from_text,
    vector_to_text,
)

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def answer(key: str, ttl_s: float = 60.0) -> CachedAnswer:
    return CachedAnswer(key=key, tenant="acme", model="m", completion={"id": key},
                        input_tokens=10, output_tokens=5,
                        expires_at=T0 + timedelta(seconds=ttl_s), request_id=f"req_{key}")


def test_an_answer_is_served_until_it_expires_and_never_after() -> None:
    clock = Clock()
    lru = AnswerLRU(clock=clock)
    lru.put(answer("a", ttl_s=30))
    clock.now = T0 + timedelta(seconds=29.9)
    assert lru.get("a") is not None
    clock.now = T0 + timedelta(seconds=30)
    assert lru.get("a") is None
    assert len(lru) == 0  # dropped, not kept around
    lru.put(answer("b", ttl_s=10))  # already expired at put: not kept
    assert len(lru) == 0


def test_the_least_recently_used_answer_goes_first() -> None:
    lru = AnswerLRU(max_entries=2, clock=Clock())
    lru.put(answer("a"))
    lru.put(answer("b"))
    assert lru.get("a") is not None  # a is now the most recent
    lru.put(answer("c"))
    assert lru.get("b") is None
    assert lru.get("a") is not None and lru.get("c") is not None


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def stored(key: str, vector: np.ndarray, *, expires_in_s: float = 60,
           created_s: float = 0) -> StoredVector:
    return StoredVector(key, vector, T0 + timedelta(seconds=expires_in_s),
                        T0 + timedelta(seconds=created_s))


def test_the_best_match_above_the_threshold_wins() -> None:
    scope = ScopeVectors()
    scope.add([stored("east", unit(1, 0, 0)), stored("north-east", unit(1, 1, 0)),
               stored("up", unit(0, 0, 1))], max_entries=10)
    match = scope.best(unit(1, 0.1, 0), 0.9, T0)
    assert match is not None and match[0] == "east"
    match = scope.best(unit(1, 0.9, 0), 0.9, T0)
    assert match is not None and match[0] == "north-east" and match[1] > 0.99
    assert scope.best(unit(0, 1, 0), 0.9, T0) is None  # nothing near enough


def test_expired_vectors_are_skipped_for_the_next_best() -> None:
    scope = ScopeVectors()
    scope.add([stored("old", unit(1, 0, 0), expires_in_s=1),
               stored("fresh", unit(1, 0.2, 0))], max_entries=10)
    later = T0 + timedelta(seconds=5)
    match = scope.best(unit(1, 0, 0), 0.9, later)
    assert match is not None and match[0] == "fresh"
    assert scope.best(unit(1, 0, 0), 0.999, later) is None


def test_top_ups_add_only_new_rows_keep_the_newest_and_track_the_newest_time() -> None:
    scope = ScopeVectors()
    scope.add([stored("a", unit(1, 0, 0), created_s=1), stored("b", unit(0, 1, 0), created_s=2)],
              max_entries=2)
    assert scope.loaded_until == T0 + timedelta(seconds=2)
    # A top-up reads back a margin of rows it has: they are not added twice.
    scope.add([stored("b", unit(0, 1, 0), created_s=2), stored("c", unit(0, 0, 1), created_s=3)],
              max_entries=2)
    assert scope.keys == ["b", "c"]
    assert scope.matrix.shape == (2, 3)
    assert scope.best(unit(1, 0, 0), 0.5, T0) is None  # "a" made room for "c"
    assert scope.loaded_until == T0 + timedelta(seconds=3)


def test_scopes_are_separate_and_bounded() -> None:
    index = SemanticIndex(max_scopes=2)
    index.scope(("acme", "m", "r1")).add([stored("a", unit(1, 0))], max_entries=5)
    assert index.scope(("globex", "m", "r1")).best(unit(1, 0), 0.5, T0) is None
    index.scope(("acme", "m", "r2"))
    # The least recently searched scope was dropped: read again from PostgreSQL if needed.
    assert index.scope(("acme", "m", "r1")).keys == []


def test_vectors_travel_as_base64_float32() -> None:
    vector = unit(0.3, -0.2, 0.9)
    assert np.array_equal(vector_from_text(vector_to_text(vector)), vector)
    assert np.array_equal(vector_from_bytes(vector.astype("<f4").tobytes()), vector)
