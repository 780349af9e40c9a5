"""Cache keys: a hash of everything that can change an answer, and nothing that cannot.

The exact key is sha256 over canonical JSON (sorted keys, no whitespace, parameters sent
as null left out like absent ones) of the tenant, the caller's guardrail policies, the
model and the request body minus the fields that only change how an answer is delivered
or accounted: `stream` and `stream_options` (a streamed request is served a
stored answer as a stream), `user` (an end-user id for the provider's abuse monitoring),
`store` and `metadata` (whether and how the provider keeps the exchange). Every other
parameter, known to us or passed through, is part of the key, so a new provider parameter
can never make two different requests share an answer.

The semantic cache splits a chat request into its last user turn (compared by meaning)
and the rest (compared exactly: `rest_hash`, the same canonical hash with that turn's
content left out).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas import ChatCompletionRequest, EmbeddingRequest

KEY_VERSION = "sluice-cache-v1"
"""Part of every hash: changing what a key covers changes this, so old rows never match."""

DELIVERY_ONLY_FIELDS = frozenset({"stream", "stream_options", "user", "store", "metadata"})


def canonical_json(value: Any) -> bytes:
    """`value` as canonical JSON: sorted keys, no whitespace, UTF-8."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _digest(kind: str, tenant: str, model: str, body: dict[str, Any],
            policies: Sequence[str]) -> str:
    scoped = {"v": KEY_VERSION, "kind": kind, "tenant": tenant, "model": model, "body": body,
              "policies": list(policies)}
    return hashlib.sha256(canonical_json(scoped)).hexdigest()


def _answer_fields(body: ChatCompletionRequest | EmbeddingRequest) -> dict[str, Any]:
    data = body.model_dump(mode="json", exclude_none=True)
    # A parameter sent as null is the provider's default, as if left out (the body keeps
    # sent nulls to forward them verbatim).
    return {name: value for name, value in data.items()
            if name not in DELIVERY_ONLY_FIELDS and value is not None}


def exact_key(tenant: str, body: ChatCompletionRequest | EmbeddingRequest, *,
              policies: Sequence[str] = ()) -> str:
    """The exact cache key of `body` sent by `tenant` (64 hex characters).

    `policies` are the guardrail policies of the caller's key: an answer screened under
    one set of policies is never replayed to a key under another.
    """
    return _digest("exact", tenant, body.model, _answer_fields(body), policies)


@dataclass(frozen=True, slots=True)
class SemanticParts:
    """A chat request as the semantic cache sees it."""

    last_user_text: str
    rest_hash: str


def semantic_parts(tenant: str, body: ChatCompletionRequest, *,
                   policies: Sequence[str] = ()) -> SemanticParts | None:
    """The last user turn's text and the hash of the rest; None when the last user turn
    is not text alone (an image or audio part means what no text embedding sees)."""
    messages = body.messages
    index = next((i for i in range(len(messages) - 1, -1, -1)
                  if messages[i].role == "user"), None)
    if index is None:
        return None
    content = messages[index].content
    if isinstance(content, str):
        text = content
    elif content and all(part.type == "text" and part.text is not None for part in content):
        text = "\n".join(part.text or "" for part in content)
    else:
        return None
    if not text.strip():
        return None
    fields = _answer_fields(body)
    fields["messages"] = [dict(message) for message in fields["messages"]]
    fields["messages"][index].pop("content", None)
    fields["last_user_turn"] = index  # where the compared turn sits in the conversation
    return SemanticParts(text, _digest("semantic-rest", tenant, body.model, fields, policies))
