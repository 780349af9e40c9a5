"""JSON Schema of every message, for Kafka-native clients in any language."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from schemas.chat import ChatCompletion, ChatCompletionRequest
from schemas.embeddings import EmbeddingRequest, EmbeddingResponse
from schemas.messages import InferenceRequest, InferenceResult, StreamChunk, UsageEvent

EXPORTED: dict[str, type[BaseModel]] = {
    "InferenceRequest": InferenceRequest,
    "InferenceResult": InferenceResult,
    "UsageEvent": UsageEvent,
    "StreamChunk": StreamChunk,
    "ChatCompletionRequest": ChatCompletionRequest,
    "ChatCompletion": ChatCompletion,
    "EmbeddingRequest": EmbeddingRequest,
    "EmbeddingResponse": EmbeddingResponse,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Each exported model's JSON Schema (validation mode), by model name."""
    return {name: model.model_json_schema() for name, model in EXPORTED.items()}
