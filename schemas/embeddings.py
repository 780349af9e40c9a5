"""OpenAI embeddings, passed through whole like chat (`POST /v1/embeddings`).

sluicegate reads the model and the input (to count its tokens for budgets) and forwards
everything else as sent (`encoding_format`, `dimensions`, `user`, and what comes next).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from schemas.chat import _Verbatim


class EmbeddingRequest(_Verbatim):
    """Body of `POST /v1/embeddings`: a string, strings, token ids, or lists of token ids."""

    model: Annotated[str, Field(min_length=1, max_length=200)]
    input: str | list[str] | list[int] | list[list[int]]

    @field_validator("input")
    @classmethod
    def _not_empty(
        cls, value: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty array")
        if isinstance(value, list) and len(value) > 2048:
            raise ValueError("input may hold at most 2048 items")
        return value

    def texts(self) -> list[str]:
        """The inputs given as text (token-id inputs are counted as they are)."""
        if isinstance(self.input, str):
            return [self.input]
        return [item for item in self.input if isinstance(item, str)]

    def token_inputs(self) -> list[list[int]]:
        """The inputs given as token ids."""
        if isinstance(self.input, str) or not self.input:
            return []
        if all(isinstance(item, int) for item in self.input):
            return [[int(item) for item in self.input]]  # type: ignore[arg-type]
        return [list(item) for item in self.input if isinstance(item, list)]

    def count(self) -> int:
        """How many embeddings were asked for."""
        return len(self.texts()) + len(self.token_inputs())


class Embedding(_Verbatim):
    """One vector (a list of floats, or base64 when `encoding_format` asked for it)."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Verbatim):
    """Tokens of the input; embeddings generate none."""

    prompt_tokens: Annotated[int, Field(ge=0)] = 0
    total_tokens: Annotated[int, Field(ge=0)] = 0

    @property
    def completion_tokens(self) -> int:
        """Always 0: an embedding call bills input only."""
        return 0

    def cached_prompt_tokens(self) -> int:
        """Always 0: no prompt cache for embeddings."""
        return 0

    def cache_write_prompt_tokens(self) -> int:
        """Always 0: no prompt cache for embeddings."""
        return 0

    def cache_write_1h_prompt_tokens(self) -> int:
        """Always 0: no prompt cache for embeddings."""
        return 0

    def reasoning_completion_tokens(self) -> int:
        """Always 0."""
        return 0


class EmbeddingResponse(_Verbatim):
    """OpenAI's embeddings list, kept whole."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage | None = None
