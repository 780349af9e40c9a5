"""The unified chat format: OpenAI chat completions, the subset a queued broker can honour.

Request bodies forbid unknown fields so a client learns at once that a parameter is not
supported (instead of silently getting an answer that ignored it). Completions ignore
unknown fields because providers add new ones all the time and we keep only what we return.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "developer", "user", "assistant", "tool"]


class TextPart(BaseModel):
    """One text part of a multi-part message content."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text, parts joined, for token counting and simulation."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(BaseModel):
    """Body of `POST /v1/chat/completions`, as OpenAI defines it (the subset we serve)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Annotated[str, Field(min_length=1, max_length=200)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: Literal[1] | None = None
    user: str | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    metadata: dict[str, str] | None = None
    stream: Literal[False] | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _no_streaming(cls, value: object) -> object:
        if value is True:
            raise ValueError("streaming is not supported by a queued broker; omit 'stream'")
        return value

    def output_limit(self) -> int | None:
        """The caller's cap on completion tokens, whichever field carried it."""
        return self.max_completion_tokens or self.max_tokens


class CompletionMessage(BaseModel):
    """The assistant message of a completion choice."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    role: Literal["assistant"] = "assistant"
    content: str | None = None


class Choice(BaseModel):
    """One choice of a completion (sluicegate always asks for exactly one)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    index: int = 0
    message: CompletionMessage
    finish_reason: str | None = "stop"


class PromptTokensDetails(BaseModel):
    """OpenAI's breakdown of `prompt_tokens`; only the prompt-cache count is kept."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # Optional: some OpenAI-compatible servers send `null` here instead of leaving it out.
    cached_tokens: Annotated[int, Field(ge=0)] | None = None


class Usage(BaseModel):
    """Token usage as the provider reported it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    prompt_tokens: Annotated[int, Field(ge=0)] = 0
    completion_tokens: Annotated[int, Field(ge=0)] = 0
    total_tokens: Annotated[int, Field(ge=0)] = 0
    # Left out when not reported (never `null`), so answers without it keep their old shape.
    prompt_tokens_details: PromptTokensDetails | None = Field(
        default=None, exclude_if=lambda details: details is None
    )

    def cached_prompt_tokens(self) -> int:
        """Of `prompt_tokens`, how many the provider served from its prompt cache.

        OpenAI counts cache hits inside `prompt_tokens`, and so does the ledger: an adapter
        for a provider that counts them apart (Anthropic's `cache_read_input_tokens` is not
        part of its `input_tokens`) must add them to `prompt_tokens` and report them here.
        Never more than `prompt_tokens`: over-reported hits must not make a cost negative.
        """
        details = self.prompt_tokens_details
        cached = details.cached_tokens if details is not None else None
        return min(cached or 0, self.prompt_tokens)


class ChatCompletion(BaseModel):
    """An OpenAI `chat.completion` object."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
