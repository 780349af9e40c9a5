"""Jinja2's growing filters, each refusing a result past the limit before it is built.

`center`, `indent`, `format`, `join`, `replace`, `wordwrap` and `tojson` (its `indent`)
can make a value far longer than their inputs in one call (a caller's width, or one
input's length times another's), as can the global `lipsum(n)`; `batch` (filled) and
`slice` make as many items or lists as a caller's number says.
Each wrapper takes the default filter's arguments (and its `pass_eval_context` /
`pass_environment` first argument), bounds the result (`growth`), and then calls the
default filter unchanged. `truncate` needs none: its result is at most its input plus the
ellipsis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from jinja2 import Environment, pass_environment, pass_eval_context
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext

from broker.templates.growth import (
    indent_bound,
    join_bound,
    json_bound,
    lines_bound,
    printf_bound,
    refuse_past_limit,
    replace_bound,
)


def bounded_filters(defaults: dict[str, Callable[..., Any]],
                    limit: int) -> dict[str, Callable[..., Any]]:
    """Replacements for the growing filters among `defaults`, bounded by `limit`."""
    center, indent, format_, join = (defaults[name] for name in ("center", "indent",
                                                                 "format", "join"))
    replace, wordwrap, tojson = defaults["replace"], defaults["wordwrap"], defaults["tojson"]
    batch, slice_ = defaults["batch"], defaults["slice"]
    # Each returns what the default returns (a Markup stays a Markup): typed Any.

    def bounded_center(value: Any, width: int = 80) -> Any:
        # The result is at least `width` long: past the limit, it is refused.
        refuse_past_limit(width if isinstance(width, int) else None, limit, "center")
        return center(value, width)

    def bounded_indent(s: str, width: int | str = 4, first: bool = False,
                       blank: bool = False) -> Any:
        if isinstance(s, str):
            refuse_past_limit(indent_bound(s, width), limit, "indent")
        return indent(s, width, first, blank)

    def bounded_format(value: str, *args: Any, **kwargs: Any) -> Any:
        refuse_past_limit(printf_bound(str(value), kwargs or args), limit, "format")
        return format_(value, *args, **kwargs)

    @pass_eval_context
    def bounded_join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "",
                     attribute: str | int | None = None) -> Any:
        if attribute is not None:
            value = map(make_attrgetter(eval_ctx.environment, attribute), value)
        items = [item if isinstance(item, str) else str(item) for item in value]
        refuse_past_limit(join_bound(str(d), items), limit, "join")
        return join(eval_ctx, items, d)

    @pass_eval_context
    def bounded_replace(eval_ctx: EvalContext, s: str, old: str, new: str,
                        count: int | None = None) -> Any:
        refuse_past_limit(replace_bound(str(s), str(old), str(new),
                                        -1 if count is None else count), limit, "replace")
        return replace(eval_ctx, s, old, new, count)

    @pass_environment
    def bounded_wordwrap(environment: Environment, s: str, width: int = 79,
                         break_long_words: bool = True, wrapstring: str | None = None,
                         break_on_hyphens: bool = True) -> Any:
        joiner = environment.newline_sequence if wrapstring is None else wrapstring
        if isinstance(s, str) and isinstance(width, int) and isinstance(joiner, str):
            refuse_past_limit(len(s) + lines_bound(s, width) * len(joiner), limit,
                              "wordwrap")
        return wordwrap(environment, s, width, break_long_words, wrapstring,
                            break_on_hyphens)

    @pass_eval_context
    def bounded_tojson(eval_ctx: EvalContext, value: Any, indent: int | None = None) -> Any:
        compact = tojson(eval_ctx, value)
        if indent is None:
            return compact
        refuse_past_limit(json_bound(compact, value, indent), limit, "tojson")
        return tojson(eval_ctx, value, indent)

    def bounded_batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        if fill_with is not None:  # the last batch is filled up to `linecount` items
            refuse_past_limit(linecount if isinstance(linecount, int) else None, limit,
                              "batch")
        return batch(value, linecount, fill_with)

    @pass_eval_context
    def bounded_slice(eval_ctx: EvalContext, value: Any, slices: int,
                      fill_with: Any = None) -> Any:
        refuse_past_limit(slices if isinstance(slices, int) else None, limit, "slice")
        return slice_(eval_ctx, value, slices, fill_with)

    return {"center": bounded_center, "indent": bounded_indent, "format": bounded_format,
            "join": bounded_join, "replace": bounded_replace, "wordwrap": bounded_wordwrap,
            "tojson": bounded_tojson, "batch": bounded_batch, "slice": bounded_slice}


LOREM_WORD_CHARS = 14
"""The longest word of Jinja2's lorem ipsum (12 characters) with its comma and space."""


def bounded_lipsum(default: Callable[..., Any], limit: int) -> Callable[..., Any]:
    """The global `lipsum`, refusing more paragraphs of words than fit in `limit`."""

    def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:
        if isinstance(n, int) and isinstance(max, int):  # `<p>…</p>` and a blank line: 16
            refuse_past_limit(n * (max * LOREM_WORD_CHARS + 16), limit, "lipsum")
        return default(n, html, min, max)

    return lipsum
