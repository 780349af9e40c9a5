"""What a request carries for the response cache (`broker.caching`, README "Caching").

Ingress computes the cache key of a request of a model with caching on and sends it with
the request; the worker copies it onto the final result; the ledger, recording a succeeded
result that carries one, keeps the answer under that key. Nothing here is read to answer a
request: a ticket only says where an answer may be kept.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class CacheTicket(BaseModel):
    """Where the ledger keeps this request's answer, and for how long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """The exact cache key: sha256 hex of the request's canonical form, tenant included."""
    # A year at most, and a real number: a producer's 1e12 or inf must not reach timedelta.
    ttl_s: Annotated[float, Field(gt=0, le=366 * 24 * 3600, allow_inf_nan=False)]
    """How long the answer stays servable, from the result's `finished_at`."""
    rest_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """Semantic cache only: the hash of everything but the last user turn."""
    embedding: Annotated[str, Field(max_length=4096)] | None = None
    """Semantic cache only: the last user turn's vector, base64 of float32 little-endian."""
