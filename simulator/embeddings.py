"""Deterministic embeddings: the same text always gets the same unit vector.

Vectors are seeded by the text (or token ids), so similarity tests are repeatable; their
length is the request's `dimensions`, else the model's own (3,072 for `*-large`, 1,536
otherwise, as text-embedding-3 and ada-002). `encoding_format: base64` returns the
little-endian float32 bytes in base64, as OpenAI does.
"""

from __future__ import annotations

import base64
import math
import struct
from hashlib import blake2b

from broker.tokens import count_embedding_tokens
from schemas import EmbeddingRequest, EmbeddingResponse
from schemas.embeddings import Embedding, EmbeddingUsage

_MASK64 = (1 << 64) - 1


def dimensions_of(body: EmbeddingRequest, upstream_model: str) -> int:
    """The vector length asked for, or the model's own."""
    asked = (body.model_extra or {}).get("dimensions")
    if isinstance(asked, int) and asked > 0:
        return asked
    return 3072 if "large" in upstream_model else 1536


def vector(seed_text: str, dimensions: int) -> list[float]:
    """A unit vector drawn from a generator seeded by `seed_text`."""
    state = int.from_bytes(blake2b(seed_text.encode(), digest_size=8).digest(), "little")
    values = []
    for _ in range(dimensions):
        state = (state * 6364136223846793005 + 1442695040888963407) & _MASK64
        values.append(((state >> 11) / float(1 << 53)) * 2 - 1)
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [value / norm for value in values]


def simulate_embeddings(body: EmbeddingRequest, *, upstream_model: str,
                        encoding: str | None = None) -> EmbeddingResponse:
    """Embed every input of `body`, with token-accurate usage."""
    dimensions = dimensions_of(body, upstream_model)
    as_base64 = (body.model_extra or {}).get("encoding_format") == "base64"
    seeds = body.texts() + [",".join(map(str, tokens)) for tokens in body.token_inputs()]
    data = []
    for index, seed in enumerate(seeds):
        values = vector(seed, dimensions)
        embedded: list[float] | str = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *values)).decode()
            if as_base64 else values)
        data.append(Embedding.model_construct(object="embedding", index=index,
                                              embedding=embedded))
    tokens = count_embedding_tokens(body, upstream_model, encoding)
    return EmbeddingResponse.model_construct(
        object="list", data=data, model=upstream_model,
        usage=EmbeddingUsage.model_construct(prompt_tokens=tokens, total_tokens=tokens))
