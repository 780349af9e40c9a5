"""The semantic cache's vectors in memory: one small matrix per conversation scope.

A scope is (tenant, model, rest hash): only requests identical but for their last user
turn are compared, so a scope is searched whole with one matrix-vector product. Vectors
live in PostgreSQL (`response_cache.embedding`); a scope is loaded the first time it is
searched and topped up with newer rows whenever a search finds nothing (a miss is about to
cost a provider call, so one indexed query more is cheap there, and a hit costs none).

With pgvector available, the same search would be one `ORDER BY embedding <=> $1 LIMIT 1`
over an HNSW index per scope filter; it is not packaged for the embedded PostgreSQL 18,
and scopes are small enough for exact search in memory.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
Scope = tuple[str, str, str]
"""(tenant, model, rest hash)."""


def vector_to_text(vector: Vector) -> str:
    """A vector as it travels in a `CacheTicket`: base64 of float32 little-endian."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def vector_from_bytes(data: bytes) -> Vector:
    """A vector stored as float32 little-endian bytes."""
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def vector_from_text(text: str) -> Vector:
    """The vector of `vector_to_text`."""
    return vector_from_bytes(base64.b64decode(text))


@dataclass(frozen=True, slots=True)
class StoredVector:
    """One cached answer's vector, as read from PostgreSQL."""

    key: str
    vector: Vector
    expires_at: datetime
    created_at: datetime


@dataclass(slots=True)
class ScopeVectors:
    """The vectors of one scope, newest last; `loaded_until` is the newest row's time."""

    keys: list[str] = field(default_factory=list)
    matrix: Vector = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    expires: list[datetime] = field(default_factory=list)
    loaded_until: datetime | None = None

    def add(self, rows: list[StoredVector], max_entries: int) -> None:
        """Add rows not held yet (by key), keeping the newest `max_entries`."""
        known = set(self.keys)
        fresh = [row for row in rows if row.key not in known]
        if fresh:
            vectors = np.stack([row.vector for row in fresh])
            self.matrix = vectors if self.matrix.size == 0 else np.vstack([self.matrix, vectors])
            self.keys += [row.key for row in fresh]
            self.expires += [row.expires_at for row in fresh]
            if len(self.keys) > max_entries:
                drop = len(self.keys) - max_entries
                self.keys, self.expires = self.keys[drop:], self.expires[drop:]
                self.matrix = self.matrix[drop:]
        for row in rows:
            if self.loaded_until is None or row.created_at > self.loaded_until:
                self.loaded_until = row.created_at

    def best(self, query: Vector, threshold: float, now: datetime) -> tuple[str, float] | None:
        """The unexpired entry most similar to `query` at or above `threshold`."""
        if not self.keys:
            return None
        scores = self.matrix @ query
        for position in np.argsort(-scores):
            score = float(scores[position])
            if score < threshold:
                return None
            if self.expires[position] > now:
                return self.keys[position], score
        return None


class SemanticIndex:
    """Scopes' vectors, at most `max_scopes` of them (least recently searched dropped)."""

    def __init__(self, max_scopes: int = 1024):
        self._scopes: OrderedDict[Scope, ScopeVectors] = OrderedDict()
        self._max_scopes = max_scopes

    def scope(self, scope: Scope) -> ScopeVectors:
        """The vectors of `scope` (empty and never loaded the first time)."""
        vectors = self._scopes.get(scope)
        if vectors is None:
            vectors = self._scopes[scope] = ScopeVectors()
            while len(self._scopes) > self._max_scopes:
                self._scopes.popitem(last=False)
        self._scopes.move_to_end(scope)
        return vectors
