"""What Anthropic's Messages API and OpenAI's chat completions call the same things.

Both directions use these tables: the `anthropic` provider adapter (our unified OpenAI form
to Anthropic and back) and the Anthropic-compatible ingress (`POST /v1/messages`: Anthropic
to our form and back). Keeping them in one place keeps the two translations each other's
inverse.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Final

STOP_REASON_TO_FINISH: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic's `stop_reason` as an OpenAI `finish_reason`."""

FINISH_TO_STOP_REASON: Final[dict[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""An OpenAI `finish_reason` as Anthropic's `stop_reason` (`stop` after a stop sequence
becomes `stop_sequence` where the text shows which one matched)."""

THINKING_BUDGETS: Final[dict[str, int]] = {
    "minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
"""Anthropic's thinking `budget_tokens` for each OpenAI `reasoning_effort`.

1024 is the least Anthropic takes, so `minimal` cannot ask for less than `low`. Each step
up is four times the last, so every level is a clearly different amount of thinking; the
highest plus our default `max_tokens` (4096) is 20480, within the output limit of every
Claude model that thinks (Opus 4 has the smallest: 32000), and below the 32k that
Anthropic's docs say to send through batches.
"""

EFFORT_LADDER: Final = ("low", "medium", "high")
"""The efforts a thinking budget comes back as: those every OpenAI reasoning model takes
(o-series models refuse `minimal`), one per distinct budget of `THINKING_BUDGETS`."""

EFFORT_UPPER_BOUNDS: Final[tuple[tuple[int, str], ...]] = tuple(
    (math.isqrt(THINKING_BUDGETS[lower] * THINKING_BUDGETS[upper]), lower)
    for lower, upper in pairwise(EFFORT_LADDER))
"""`(bound, effort)`: a budget below `bound` (and not below the previous one) is `effort`.

Each bound is the geometric mean of two neighbouring budgets (2048, 8192), because budgets
grow by factors: a budget is the effort whose budget it is nearest to in ratio. Derived from
`THINKING_BUDGETS`, so `effort_for_budget(THINKING_BUDGETS[e]) == e` for every `e` of
`EFFORT_LADDER` (and `minimal` comes back as `low`, its budget's)."""


def effort_for_budget(budget_tokens: int) -> str:
    """OpenAI's `reasoning_effort` nearest Anthropic's thinking `budget_tokens`."""
    for bound, effort in EFFORT_UPPER_BOUNDS:
        if budget_tokens < bound:
            return effort
    return EFFORT_LADDER[-1]


ERROR_TYPE_BY_STATUS: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""The `error.type` of Anthropic's error envelope for an HTTP status."""

OVERLOADED_STATUS: Final = 529
"""Anthropic's "overloaded": retriable, like a 503."""

DEFAULT_API_VERSION: Final = "2023-06-01"
"""The `anthropic-version` header sent and accepted when none is given."""


def error_type_for(status: int) -> str:
    """Anthropic's error type for `status` (`api_error` for an unlisted 5xx)."""
    if status in ERROR_TYPE_BY_STATUS:
        return ERROR_TYPE_BY_STATUS[status]
    return "api_error" if status >= 500 else "invalid_request_error"
