"""Anthropic's Messages request body, checked as Anthropic defines it.

Only what the translation (`request.py`) reads is declared; a mistake in it is answered 400
naming the Anthropic field. Parameters not declared are kept (`model_extra`) and forwarded
as `request.py` says; fields of content blocks not declared are not translated.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    """A part of the body whose fields are all known (others are mistakes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class _Open(BaseModel):
    """A part of the body that may carry fields Anthropic adds later (kept)."""

    model_config = ConfigDict(frozen=True, extra="allow")


class TextBlock(_Open):
    """`{"type": "text", "text"}`."""

    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None


class Base64Source(_Strict):
    """An image's or document's bytes, base64."""

    type: Literal["base64"]
    media_type: Annotated[str, Field(min_length=1)]
    data: Annotated[str, Field(min_length=1)]


class UrlSource(_Strict):
    """An image the provider fetches."""

    type: Literal["url"]
    url: Annotated[str, Field(min_length=1)]


class TextSource(_Strict):
    """A plain-text document."""

    type: Literal["text"]
    media_type: str = "text/plain"
    data: str


class ImageBlock(_Open):
    """`{"type": "image", "source"}`."""

    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]
    cache_control: dict[str, Any] | None = None


class DocumentBlock(_Open):
    """`{"type": "document", "source"}`: a PDF or plain text."""

    type: Literal["document"]
    source: Annotated[Base64Source | TextSource, Field(discriminator="type")]
    title: str | None = None
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(_Open):
    """An assistant's tool call."""

    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolResultBlock(_Open):
    """A user's answer to a tool call."""

    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1)]
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None


class ThinkingBlock(_Open):
    """An earlier answer's thinking, sent back (opaque here)."""

    type: Literal["thinking", "redacted_thinking"]


Block = Annotated[TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock
                  | ThinkingBlock, Field(discriminator="type")]


class Message(_Strict):
    """One turn of `messages`."""

    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolDefinition(_Open):
    """One entry of `tools`."""

    name: Annotated[str, Field(min_length=1)]
    input_schema: dict[str, Any]
    description: str | None = None
    type: Literal["custom"] | None = None
    """Anthropic's server tools (web search, code execution) cannot travel as functions."""
    cache_control: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoice(_Strict):
    """`tool_choice`."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(_Open):
    """`thinking`: extended thinking on or off, and its budget."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=1024, strict=True)] | None = None


class Metadata(_Strict):
    """`metadata`."""

    user_id: Annotated[str, Field(max_length=256)] | None = None


class OutputConfig(_Open):
    """`output_config`: effort and a JSON-schema output format."""

    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: dict[str, Any] | None = None


class MessagesBody(_Open):
    """Body of `POST /v1/messages/count_tokens`: a Messages body, `max_tokens` optional."""

    model: Annotated[str, Field(min_length=1, max_length=200)]
    max_tokens: Annotated[int, Field(ge=1, strict=True)] | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: Annotated[bool, Field(strict=True)] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, strict=True)] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(MessagesBody):
    """Body of `POST /v1/messages` (and of each Message Batch request's `params`)."""

    max_tokens: Annotated[int, Field(ge=1, strict=True)]
