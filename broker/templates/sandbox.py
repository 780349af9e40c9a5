"""Jinja2's sandbox with a bound on how much one render may produce.

`SandboxedEnvironment` refuses unsafe attribute access and caps `range()` at 100,000
items, but nothing else limits size: `{{ s * n }}` with a caller's `n = 10**8` builds a
200 MB string in one step, and a loop over a caller's million-item list repeating a 2 MB
variable asks for terabytes. Two checks together keep a render within a limit:

- `rendering` sums the output while it streams (`Template.generate`) and stops past the
  limit: loops cannot run away with memory;
- this environment intercepts `*` and `**`, the operators that can allocate far more than
  their operands in one expression, before the output check could see the result.

Neither bounds CPU time (a template can loop without output); the edge renders off its
event loop for that reason.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

MAX_EXPONENT = 1024
"""Largest exponent `**` computes: prompts need small powers, and `10 ** 10 ** 8` alone
would hold a thread for minutes."""

MAX_NUMBER_BITS = 16_384
"""Largest integer `*` and `**` may make (~4,900 digits): Python refuses to print an
integer of more than 4,300 digits anyway, so a larger one can only cost time."""


class OverLimit(Exception):
    """An expression or the output went past the render's limit; `rendering` turns it into
    the caller's `InvalidRequest` naming the template."""


class BoundedSandbox(SandboxedEnvironment):
    """A sandbox whose `*` and `**` refuse results larger than `max_chars` (sequences)
    or than `MAX_NUMBER_BITS` (integers)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, max_chars: int) -> None:
        # No autoescape: the output is a chat prompt, not HTML. StrictUndefined: a variable
        # the template uses but nobody gave is an error naming it, never an empty string.
        super().__init__(undefined=StrictUndefined, autoescape=False)
        self.max_chars = max_chars

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """`left <operator> right`, refused when the result would be too large."""
        if operator == "*":
            self._check_product(left, right)
        else:
            self._check_power(left, right)
        return super().call_binop(context, operator, left, right)

    def _check_product(self, left: Any, right: Any) -> None:
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                size = len(sequence) * times
                if size > self.max_chars:
                    raise OverLimit(f"an expression would repeat a value to {size:,} items")
                return
        if isinstance(left, int) and isinstance(right, int) \
                and left.bit_length() + right.bit_length() > MAX_NUMBER_BITS:
            raise OverLimit(f"a product would exceed {MAX_NUMBER_BITS:,} bits")

    @staticmethod
    def _check_power(base: Any, exponent: Any) -> None:
        if isinstance(exponent, int | float) and exponent > MAX_EXPONENT:
            raise OverLimit(f"an exponent of {exponent} is above the limit of {MAX_EXPONENT}")
        if isinstance(base, int) and isinstance(exponent, int) \
                and base.bit_length() * exponent > MAX_NUMBER_BITS:
            raise OverLimit(f"a power would exceed {MAX_NUMBER_BITS:,} bits")


@lru_cache(maxsize=8)
def sandbox(max_chars: int) -> BoundedSandbox:
    """The environment for one limit: it holds no per-template state, and a process uses
    one limit or a few (the edge's body limit, the default)."""
    return BoundedSandbox(max_chars)


@lru_cache(maxsize=1024)
def compiled(source: str, max_chars: int) -> Template:
    """`source` compiled in the environment for `max_chars`."""
    return sandbox(max_chars).from_string(source)
