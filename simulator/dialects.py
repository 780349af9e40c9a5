"""How each wire format words what every format must say: errors and rate limits.

The simulator has one brain (`simulator.answers`) and one judge of faults and limits
(`SimulatorApp`); a `Dialect` is the small part that differs between providers: the
error envelope, the limit headers, and how a wait before retrying is announced.
"""

from __future__ import annotations

from typing import Protocol

from simulator.asgi import error_body
from simulator.limits import LimitVerdict, openai_limit_headers, retry_headers

Headers = list[tuple[bytes, bytes]]


class Dialect(Protocol):
    """The provider-specific wording of errors and rate limits."""

    @property
    def format(self) -> str:
        """The format's name in `/stats` (`openai`, `azure`, `anthropic`, `gemini`)."""
        ...

    def error(self, status: int, message: str, *, retry_after_s: float | None = None,
              param: str | None = None, code: str | None = None) -> tuple[bytes, Headers]:
        """The error body for `status`, and the headers that go with it.

        Args:
            status: The HTTP status answered.
            message: What went wrong, for a person.
            retry_after_s: How long the caller should wait, when it should.
            param: The offending request field, when one is to blame.
            code: A machine-readable code, where the format has one.
        """
        ...

    def limit_headers(self, verdict: LimitVerdict) -> Headers:
        """The rate-limit headers every answer carries."""
        ...

    def fault_status(self, status: int) -> int:
        """The status this provider answers for an injected failure of `status`."""
        ...


class OpenAIDialect:
    """OpenAI's `{"error": {message, type, param, code}}` and `x-ratelimit-*` headers."""

    format = "openai"

    def error(self, status: int, message: str, *, retry_after_s: float | None = None,
              param: str | None = None, code: str | None = None) -> tuple[bytes, Headers]:
        """OpenAI's envelope; its `type` follows from the status."""
        kind = ("rate_limit_error" if status == 429
                else "server_error" if status >= 500 else "invalid_request_error")
        headers = retry_headers(retry_after_s) if retry_after_s is not None else []
        return error_body(message, type_=kind, param=param, code=code), headers

    def limit_headers(self, verdict: LimitVerdict) -> Headers:
        """All six `x-ratelimit-*` headers of the limits that are set."""
        return openai_limit_headers(verdict)

    def fault_status(self, status: int) -> int:
        """Injected statuses are answered as they are."""
        return status


OPENAI = OpenAIDialect()
