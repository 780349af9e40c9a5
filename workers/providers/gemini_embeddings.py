"""OpenAI embeddings requests as Gemini `batchEmbedContents` calls, and back (pure).

| OpenAI | Gemini | Decision |
|---|---|---|
| `input`: a string or strings | one `requests[]` entry each (1) | translated |
| `input`: token ids | — | refused (Gemini embeds text) |
| `dimensions` | `outputDimensionality` of each entry | translated |
| `encoding_format: float` | — | the default |
| `encoding_format: base64` | vectors packed here (2) | translated |
| `user` | — | dropped |
| any other parameter | — | refused |

1. `{model, content: {parts: [{text}]}}`.
2. Little-endian float32, base64, as OpenAI sends them.

The answer's `embeddings[i].values` become `data[i].embedding`. Gemini's embedding answers
need not carry a token count; when `usageMetadata.promptTokenCount` is absent the usage is
the caller's estimate (`count_embedding_tokens`), so the call is still billed.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from broker.errors import UnsupportedParameter
from schemas import EmbeddingRequest, EmbeddingResponse

_TRANSLATED = frozenset({"model", "input", "dimensions", "encoding_format", "user"})


def to_gemini_embeddings(body: EmbeddingRequest, *, model_path: str,
                         name: str = "") -> dict[str, Any]:
    """The `batchEmbedContents` body embedding `body`'s input with `model_path`
    (`models/...`).

    Raises:
        UnsupportedParameter: Gemini cannot express a parameter; `param` names it.
    """
    params = body.model_dump(mode="json", exclude_none=True)
    unknown = sorted(set(params) - _TRANSLATED)
    refusal = None
    if body.token_inputs():
        refusal = ("input", "Gemini embeds text, not token ids")
    elif unknown:
        refusal = (unknown[0], "sluicegate's Gemini adapter does not translate it")
    elif params.get("encoding_format", "float") not in ("float", "base64"):
        refusal = ("encoding_format", "only float and base64")
    if refusal is not None:
        raise UnsupportedParameter(f"Gemini cannot express '{refusal[0]}': {refusal[1]}",
                                   param=refusal[0], deployment=name)
    extra = ({"outputDimensionality": params["dimensions"]} if "dimensions" in params
             else {})
    return {"requests": [{"model": model_path, "content": {"parts": [{"text": text}]}, **extra}
                         for text in body.texts()]}


def from_gemini_embeddings(data: dict[str, Any], *, body: EmbeddingRequest, model: str,
                           estimated_tokens: int) -> EmbeddingResponse:
    """OpenAI's embeddings list for Gemini's answer `data` to `body`.

    Raises:
        ValueError: The answer holds another number of vectors than `body` has inputs.
        pydantic.ValidationError: `data` is not shaped like an answer.
    """
    embeddings = data.get("embeddings") or []
    if len(embeddings) != body.count():
        raise ValueError(f"{len(embeddings)} vectors for {body.count()} inputs")
    packed = (body.model_extra or {}).get("encoding_format") == "base64"
    tokens = (data.get("usageMetadata") or {}).get("promptTokenCount", estimated_tokens)
    return EmbeddingResponse.model_validate({
        "object": "list", "model": model,
        "data": [{"object": "embedding", "index": index,
                  "embedding": _packed(item["values"]) if packed else item["values"]}
                 for index, item in enumerate(embeddings)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _packed(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
