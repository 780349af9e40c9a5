"""Upper bounds of the length of a value before it is built.

Some string operations make a result far longer than their inputs in one step: a width
(`s.center(10**10)`, `'%*s' % (n, s)`), or a product of two input lengths (`s.replace('a',
big)`, `big.join(many)`). The sandbox asks these functions for a bound first and refuses
the call when it passes the render's limit, so the value is never allocated. Bounds may be
loose (above the real length) but never below it; each costs time linear in the inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from broker.errors import SluiceError

Text = str | bytes | bytearray

WIDENING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
"""Methods whose result is as long as their first argument, at least."""

GROWING_METHODS = WIDENING_METHODS | {"expandtabs", "replace", "join", "translate"}
"""The methods of `str` and `bytes` whose result can outgrow their inputs."""

_PRINTF_SPEC = re.compile(r"%(?:\((?P<key>[^()]*)\))?[-#0 +]*(?P<width>\*|\d+)?"
                          r"(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<conversion>.)?", re.DOTALL)

_NUMBER_DIGITS = 400
"""Generous length of a number printed without width or precision (a float needs at most
~310 digits); an integer's own digits are added from its size."""


class OverLimit(SluiceError):
    """An expression or the output went past the render's limit; `rendering` turns it into
    the caller's `InvalidRequest` naming the template."""


def refuse_past_limit(bound: int | None, limit: int, what: str) -> None:
    """Raise `OverLimit` naming `what` when `bound` (None: unknown, the call then fails on
    its own) is above `limit`."""
    if bound is not None and bound > limit:
        raise OverLimit(f"{what} would make a value of up to {bound:,} characters")


def method_bound(receiver: Text, name: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> int | None:
    """The longest `receiver.<name>(*args, **kwargs)` can be, or None when the arguments are
    not what the method accepts (the call itself then raises the usual TypeError)."""
    size = len(receiver)
    first = args[0] if args else None
    if name in WIDENING_METHODS:
        return max(size, first) if isinstance(first, int) else None
    if name == "expandtabs":
        tabsize = kwargs.get("tabsize", 8) if first is None else first
        if not isinstance(tabsize, int):
            return None
        tabs = receiver.count("\t") if isinstance(receiver, str) else receiver.count(b"\t")
        return size + tabs * max(tabsize, 0)
    if name == "replace" and len(args) >= 2:
        return replace_bound(receiver, args[0], args[1], args[2] if len(args) > 2 else -1)
    if name == "join" and isinstance(first, list):
        return join_bound(receiver, first)
    if name == "translate" and isinstance(receiver, str):
        return size * _longest_replacement(first)
    return size if name == "translate" else None  # bytes.translate maps byte to byte


def replace_bound(text: Text, old: Any, new: Any, count: Any = -1) -> int | None:
    """The longest `text.replace(old, new, count)` can be."""
    if not isinstance(old, Text) or not isinstance(new, Text) or not isinstance(count, int):
        return None
    try:  # an empty `old` matches between every two characters and at both ends
        found = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
    except TypeError:  # str and bytes mixed: the call raises too
        return None
    if count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def join_bound(separator: Text, items: list[Any]) -> int:
    """The longest `separator.join(items)` can be (items not of text type make the call
    fail, so they count nothing)."""
    parts = sum(len(item) for item in items if isinstance(item, Text))
    return parts + len(separator) * max(len(items) - 1, 0)


def lines_bound(text: str, width: int) -> int:
    """The most lines Jinja2's `wordwrap` (textwrap) makes of `text`: a line holds at
    least one word or a `width`-long piece of one, and words end at whitespace or
    hyphens; each paragraph adds one."""
    separators = sum(text.count(char) for char in " \t\n\r\x0b\x0c-")
    return len(text) // max(width, 1) + 2 * separators + len(text.splitlines()) + 1


def printf_bound(template: Text, values: Any) -> int | None:
    """The longest `template % values` can be, or None when a width or precision comes
    from an argument (`%*s`) that is no int, which `%` refuses anyway."""
    text = template.decode("latin-1") if isinstance(template, bytes | bytearray) else template
    positional = list(values) if isinstance(values, tuple) else [values]
    mapping = values if isinstance(values, Mapping) else None
    total, index = len(text), 0
    for spec in _PRINTF_SPEC.finditer(text):
        for star in ("width", "precision"):
            if spec[star] == "*":
                taken = positional[index] if index < len(positional) else None
                index += 1
                if not isinstance(taken, int):
                    return None
                total += abs(taken)
            elif spec[star]:
                total += int(spec[star])
        if spec["conversion"] in (None, "%"):
            continue
        if mapping is not None and spec["conversion"] == "(":  # a key with parentheses
            total += max((_printed_length(value, "r") for value in mapping.values()),
                         default=0)
            continue
        if mapping is not None and spec["key"] is not None:
            value = mapping.get(spec["key"])
        else:
            value = positional[index] if index < len(positional) else None
            index += 1
        total += _printed_length(value, spec["conversion"])
    return total


def indent_bound(text: str, width: Any) -> int | None:
    """The longest Jinja2's `indent` filter makes `text` with `width` (spaces or a string)
    put before each line."""
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else None
    return None if step is None else len(text) + 1 + (len(text.splitlines()) + 2) * max(step, 0)


def json_bound(compact: str, value: Any, indent: Any) -> int | None:
    """The longest `json.dumps(value, indent=indent)` can be, from its compact form
    (`compact`, which also proved `value` has no cycles): each line, at most one per
    separator or bracket, is indented once per level of nesting."""
    step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) \
        else None
    if step is None:
        return None
    lines = compact.count(",") + 2 * (compact.count("[") + compact.count("{")) + 1
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, Mapping) else \
            item if isinstance(item, list | tuple) else None
        if children is not None:
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in children)
    return len(compact) + lines * (1 + deepest * max(step, 0))


def format_spec_bound(spec: str) -> int:
    """The largest number in a `str.format` field's spec (its width or precision; a digit
    used as fill only makes the bound looser)."""
    return max((int(digits) for digits in re.findall(r"\d+", spec)), default=0)


def _printed_length(value: Any, conversion: str) -> int:
    """Generous length of `value` printed by a `%` conversion without width."""
    if isinstance(value, int | float):  # an int's decimal digits: under a third of its bits
        return _NUMBER_DIGITS + (value.bit_length() // 3 if isinstance(value, int) else 0)
    if conversion in "sb" and isinstance(value, str):
        return len(value)
    if conversion in "sb" and not isinstance(value, bytes | bytearray):
        return len(str(value))  # (bytes under `s` print as their repr: below)
    # repr() may escape a character as `\U0001f600`: ten times its length at most.
    return 10 * len(str(value)) + 2


def _longest_replacement(table: Any) -> int:
    """The longest string `str.translate` can put in place of one character."""
    replacements: Iterable[Any] = ()
    if isinstance(table, Mapping):
        replacements = table.values()
    elif isinstance(table, list | tuple):
        replacements = table
    return max([1, *(len(item) for item in replacements if isinstance(item, str))])
