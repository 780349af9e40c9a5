"""The wire contract of sluicegate: every message and API body, and topic names.

This package does no I/O and imports nothing else of ours, so Kafka-native clients and
other languages can rely on it (and on its exported JSON Schema) alone.
"""

from schemas.chat import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    CompletionMessage,
    CompletionTokensDetails,
    ContentPart,
    PromptTokensDetails,
    Tool,
    ToolCall,
    Usage,
)
from schemas.embeddings import EmbeddingRequest, EmbeddingResponse
from schemas.messages import (
    FINAL_STATUSES,
    SCHEMA_VERSION,
    ErrorInfo,
    InferenceRequest,
    InferenceResult,
    Lane,
    RequestStatus,
    StreamChunk,
    UsageEvent,
)
from schemas.topics import Topics, is_valid_topic_component

__all__ = [
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "ChatCompletion",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "CompletionMessage",
    "CompletionTokensDetails",
    "ContentPart",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "ErrorInfo",
    "InferenceRequest",
    "InferenceResult",
    "Lane",
    "PromptTokensDetails",
    "RequestStatus",
    "StreamChunk",
    "Tool",
    "ToolCall",
    "Topics",
    "Usage",
    "UsageEvent",
    "is_valid_topic_component",
]
