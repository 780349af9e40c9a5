"""Jinja2's sandbox with a bound on how much one render may produce.

`SandboxedEnvironment` refuses unsafe attribute access and caps `range()` at 100,000
items, but nothing else limits size: `{{ s * n }}` with a caller's `n = 10**8` builds a
200 MB string in one step, and a loop over a caller's million-item list repeating a 2 MB
variable asks for terabytes. Two checks together keep a render within a limit:

- `rendering` sums the output while it streams (`Template.generate`) and stops past the
  limit: loops cannot run away with output;
- this environment refuses, before they run, the single steps that can allocate far more
  than their operands: `*` and `**`, and the string operations whose result grows with a
  width or with the product of two input lengths (`s.center(n)`, `'%*s' % (n, s)`,
  `'{:>{}}'.format(s, n)`, `s.replace('a', big)`, `big.join(items)`, the filters
  `center`, `indent`, `format`, `join`, `replace`, `wordwrap`, `tojson`, the global
  `lipsum`), from a bound of their result's length (`growth`).

Neither bounds CPU time (a template can loop without output); the edge renders off its
event loop for that reason. Nor do they bound what a loop accumulates without output
(`~`/`+` into a `namespace` attribute, `list.append`/`extend`), one step at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache, update_wrapper
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup

from broker.templates.bounded_filters import bounded_filters, bounded_lipsum
from broker.templates.growth import (
    GROWING_METHODS,
    OverLimit,
    Text,
    format_spec_bound,
    method_bound,
    printf_bound,
    refuse_past_limit,
)

__all__ = ["BoundedSandbox", "OverLimit", "compiled", "sandbox"]

MAX_EXPONENT = 1024
"""Largest exponent `**` computes: prompts need small powers, and `10 ** 10 ** 8` alone
would hold a thread for minutes."""

MAX_NUMBER_BITS = 16_384
"""Largest integer `*` and `**` may make (~4,900 digits): Python refuses to print an
integer of more than 4,300 digits anyway, so a larger one can only cost time."""


class BoundedSandbox(SandboxedEnvironment):
    """A sandbox whose `*` and `**` refuse results larger than `max_chars` (sequences)
    or than `MAX_NUMBER_BITS` (integers), and whose growing string operations refuse
    results larger than `max_chars`."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, max_chars: int) -> None:
        # No autoescape: the output is a chat prompt, not HTML. StrictUndefined: a variable
        # the template uses but nobody gave is an error naming it, never an empty string.
        super().__init__(undefined=StrictUndefined, autoescape=False)
        self.max_chars = max_chars
        self.filters.update(bounded_filters(self.filters, max_chars))
        self.globals["lipsum"] = bounded_lipsum(generate_lorem_ipsum, max_chars)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """`left <operator> right`, refused when the result would be too large."""
        if operator == "*":
            self._check_product(left, right)
        elif operator == "**":
            self._check_power(left, right)
        elif isinstance(left, Text):  # printf-style formatting, not a remainder
            refuse_past_limit(_escaped(left, printf_bound(left, right)), self.max_chars,
                              "a '%' format")
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """`obj(*args, **kwargs)` from the template; a growing method of a string (e.g.
        `s.center(n)`) is refused when its result would pass the limit."""
        receiver, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        if isinstance(receiver, Text) and name in GROWING_METHODS:
            if name == "join" and args:  # measured, then joined: an iterator runs once
                args = (list(args[0]), *args[1:])
            refuse_past_limit(_escaped(receiver, method_bound(receiver, name, args, kwargs)),
                              self.max_chars, f"{type(receiver).__name__}.{name}()")
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map` with each field's width checked before it is
        padded, and the fields' total checked as they are made (`_BoundedFormatter`)."""
        if super().wrap_str_format(value) is None:  # not a string's format method
            return None
        text: str = value.__self__
        is_format_map = value.__name__ == "format_map"

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs = args[0]
                args = ()
            formatter = (_BoundedEscapeFormatter(self, escape=text.escape)
                         if isinstance(text, Markup) else _BoundedFormatter(self))
            return type(text)(formatter.vformat(text, args, kwargs))

        return update_wrapper(bounded_format, value)

    def _check_product(self, left: Any, right: Any) -> None:
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, str | bytes | bytearray | list | tuple) \
                    and isinstance(times, int):
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


MARKUP_ESCAPE_GROWTH = 5
"""How much longer escaping makes a text at most: `'` becomes `&#39;`."""


def _escaped(receiver: Any, bound: int | None) -> int | None:
    # A Markup (`|safe`) escapes what it is combined with: up to five times as long.
    return bound * MARKUP_ESCAPE_GROWTH if bound is not None and isinstance(
        receiver, Markup) else bound


class _BoundedFormatter(SandboxedFormatter):
    """The sandbox's `str.format` formatter, refusing a field wider than the limit before
    it is padded and a result longer than the limit once its fields add up to more."""

    def __init__(self, env: BoundedSandbox, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self.limit = env.max_chars
        self.written = 0

    def vformat(self, format_string: str, args: Sequence[Any],
                kwargs: Mapping[str, Any]) -> str:
        self.written = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        refuse_past_limit(format_spec_bound(format_spec), self.limit,
                          f"the format field '{{:{format_spec[:40]}}}'")
        field = super().format_field(value, format_spec)
        self.written += len(field)
        refuse_past_limit(self.written, self.limit, "str.format()")
        return field


class _BoundedEscapeFormatter(_BoundedFormatter, SandboxedEscapeFormatter):
    """`_BoundedFormatter` for a `Markup` format string, escaping what it inserts."""


@lru_cache(maxsize=8)
def sandbox(max_chars: int) -> BoundedSandbox:
    """The environment for one limit: it holds no per-template state, and a process uses
    one limit or a few (the edge's body limit, the default)."""
    return BoundedSandbox(max_chars)


@lru_cache(maxsize=1024)
def compiled(source: str, max_chars: int) -> Template:
    """`source` compiled in the environment for `max_chars`."""
    return sandbox(max_chars).from_string(source)
