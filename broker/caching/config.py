"""A model's response-cache settings (`cache:` of a model in the configuration file).

Off unless a model says `cache:`. The exact cache replays an answer to a request identical
in every parameter; the semantic cache (`cache.semantic`) also to a request whose last
user turn means nearly the same (cosine similarity of all-MiniLM-L6-v2 vectors at or above
`threshold`) and whose every other part is identical. Both replay answers whatever the
temperature: turning the cache on for a model is the operator's statement that a repeated
question may get the earlier answer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class SemanticCacheConfig(BaseModel):
    """When a similar last user turn may reuse an answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: Annotated[float, Field(gt=0, le=1)] = 0.92
    """Least cosine similarity of the last user turns (1: the same meaning)."""
    max_entries: Annotated[int, Field(ge=1)] = 20_000
    """Vectors kept in memory per tenant, model and conversation rest (newest first)."""


class CacheConfig(BaseModel):
    """The response cache of one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttl_s: Annotated[float, Field(gt=0)] = 3600.0
    """How long an answer may be replayed, from when it was produced."""
    semantic: SemanticCacheConfig | None = None
    """Also answer similar requests (chat models only); None: exact matches only."""
