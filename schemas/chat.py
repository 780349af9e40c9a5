"""The unified chat format: OpenAI chat completions, passed through whole.

sluicegate validates what it reads itself (the model, the messages' shape, the fields
budgets and estimates use) and forwards everything else as the client sent it: tools,
`response_format`, every content part type, `logprobs`, `seed`, `reasoning_effort`, and
whatever OpenAI adds next, without a sluicegate release. Answers are kept whole the same
way: whatever the provider returned (tool calls, refusals, annotations, audio, logprobs,
usage details, `system_fingerprint`) reaches the client as sent, apart from `id`.

Fields a sender set to null stay null on the way through (`_Verbatim`), even though
Kafka messages are written without nulls: an assistant message's `"content": null` beside
its tool calls is part of the answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Verbatim(BaseModel):
    """A passed-through object: unknown fields kept, and nulls the sender set kept.

    `exclude_none` (how Kafka messages are written) drops only the nulls sluicegate itself
    would have put there, never one that came from the client or the provider.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    @model_serializer(mode="wrap")
    def _keep_sent_nulls(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if info.exclude_none:
            extra = self.__pydantic_extra__ or {}
            for name in (*self.model_fields_set, *extra):
                if name not in data and getattr(self, name, None) is None:
                    data[name] = None
        return data


# --- requests --------------------------------------------------------------------------


class ImageUrl(_Verbatim):
    """An `image_url` part's image: a URL or a `data:` URL, and the detail asked for."""

    url: Annotated[str, Field(min_length=1)]
    detail: str | None = None
    """`low`, `high` or `auto` (OpenAI's default); it decides how many tokens it costs."""


class InputAudio(_Verbatim):
    """An `input_audio` part's audio, base64-encoded."""

    data: str
    format: str


class ContentPart(_Verbatim):
    """One part of a message's content: `text`, `image_url`, `input_audio`, `file`,
    `refusal`, or a type OpenAI adds later (forwarded as it is)."""

    type: Annotated[str, Field(min_length=1)]
    text: str | None = None
    image_url: ImageUrl | None = None
    input_audio: InputAudio | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _carries_its_payload(self) -> ContentPart:
        required = {"text": self.text, "image_url": self.image_url,
                    "input_audio": self.input_audio, "refusal": self.refusal}
        if self.type in required and required[self.type] is None:
            raise ValueError(f"a '{self.type}' part needs its '{self.type}' field")
        if self.type == "file" and not isinstance((self.__pydantic_extra__ or {}).get("file"),
                                                  dict):
            raise ValueError("a 'file' part needs its 'file' object")
        return self


class FunctionCall(_Verbatim):
    """A function call the assistant made: its name and JSON arguments."""

    name: str | None = None
    arguments: str | None = None


class ToolCall(_Verbatim):
    """One tool call of an assistant message (or of an answer)."""

    id: str | None = None
    type: str | None = None
    function: FunctionCall | None = None


class ChatMessage(_Verbatim):
    """One message of a conversation."""

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None

    def text(self) -> str:
        """The message's text (text and refusal parts joined), for counting and simulation."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or part.refusal or "" for part in self.content)

    def parts(self) -> list[ContentPart]:
        """The content parts (a plain-text content is none)."""
        return self.content if isinstance(self.content, list) else []


class FunctionDefinition(_Verbatim):
    """A function the model may call: name, description and JSON-schema parameters."""

    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Verbatim):
    """One entry of `tools`."""

    type: str = "function"
    function: FunctionDefinition | None = None


class ResponseFormat(_Verbatim):
    """`response_format`: `text`, `json_object`, or `json_schema` with its schema."""

    type: Annotated[str, Field(min_length=1)]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Verbatim):
    """`stream_options`: whether the client wants a last chunk with the usage."""

    include_usage: Annotated[bool, Field(strict=True)] | None = None


class ChatCompletionRequest(_Verbatim):
    """Body of `POST /v1/chat/completions`, as OpenAI defines it.

    Only what sluicegate reads is declared; every other parameter is kept as sent
    (`model_extra`) and forwarded to the provider.
    """

    model: Annotated[str, Field(min_length=1, max_length=200)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    # Strict: a "16" or "yes" would be forwarded coerced, not as sent, and OpenAI refuses
    # them; better the client hears it from us, naming the field.
    max_tokens: Annotated[int, Field(ge=1, strict=True)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, strict=True)] | None = None
    n: Annotated[int, Field(ge=1, le=128, strict=True)] | None = None
    stream: Annotated[bool, Field(strict=True)] | None = None
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    functions: list[FunctionDefinition] | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None

    def output_limit(self) -> int | None:
        """The caller's cap on completion tokens, whichever field carried it."""
        return self.max_completion_tokens or self.max_tokens

    def wants_stream_usage(self) -> bool:
        """The client asked for the usage chunk at the end of its stream."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def choices(self) -> int:
        """How many answers were asked for (`n`)."""
        return self.n or 1


# --- answers ---------------------------------------------------------------------------


class CompletionMessage(_Verbatim):
    """The assistant message of a completion choice, with whatever else the provider sent
    (`tool_calls`, `refusal`, `annotations`, `audio`, `function_call`)."""

    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(_Verbatim):
    """One choice of a completion (`logprobs` and the like are kept as sent)."""

    index: int = 0
    message: CompletionMessage
    finish_reason: str | None = "stop"


class PromptTokensDetails(_Verbatim):
    """OpenAI's breakdown of `prompt_tokens` (cached, audio, ...)."""

    # Optional: some OpenAI-compatible servers send `null` here instead of leaving it out.
    cached_tokens: Annotated[int, Field(ge=0)] | None = None
    # Left out when not reported, so OpenAI's answers keep their shape.
    cache_creation_tokens: Annotated[int, Field(ge=0)] | None = Field(
        default=None, exclude_if=lambda tokens: tokens is None)
    cache_creation_1h_tokens: Annotated[int, Field(ge=0)] | None = Field(
        default=None, exclude_if=lambda tokens: tokens is None)
    """Of `cache_creation_tokens`, those written to Anthropic's one-hour cache (billed at
    twice the input price, against 1.25 times for its five-minute cache)."""
    """Of `prompt_tokens`, how many were written to the provider's prompt cache (Anthropic's
    `cache_creation_input_tokens`; OpenAI reports none), billed at the cache-write price."""


class CompletionTokensDetails(_Verbatim):
    """OpenAI's breakdown of `completion_tokens` (reasoning, audio, predictions)."""

    reasoning_tokens: Annotated[int, Field(ge=0)] | None = None


class Usage(_Verbatim):
    """Token usage as the provider reported it."""

    prompt_tokens: Annotated[int, Field(ge=0)] = 0
    completion_tokens: Annotated[int, Field(ge=0)] = 0
    total_tokens: Annotated[int, Field(ge=0)] = 0
    # Left out when not reported (never `null`), so answers without it keep their shape.
    prompt_tokens_details: PromptTokensDetails | None = Field(
        default=None, exclude_if=lambda details: details is None
    )
    completion_tokens_details: CompletionTokensDetails | None = Field(
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

    def cache_write_prompt_tokens(self) -> int:
        """Of `prompt_tokens`, how many were written to the provider's prompt cache (never
        more than the prompt tokens not served from it)."""
        details = self.prompt_tokens_details
        written = details.cache_creation_tokens if details is not None else None
        return min(written or 0, self.prompt_tokens - self.cached_prompt_tokens())

    def cache_write_1h_prompt_tokens(self) -> int:
        """Of the cache writes, those to the one-hour cache (never more than all writes)."""
        details = self.prompt_tokens_details
        written = details.cache_creation_1h_tokens if details is not None else None
        return min(written or 0, self.cache_write_prompt_tokens())

    def reasoning_completion_tokens(self) -> int:
        """Of `completion_tokens`, how many the model spent reasoning (billed as output)."""
        details = self.completion_tokens_details
        reasoning = details.reasoning_tokens if details is not None else None
        return min(reasoning or 0, self.completion_tokens)


class ChatCompletion(_Verbatim):
    """An OpenAI `chat.completion` object, kept whole."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
