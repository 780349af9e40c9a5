"""Typed placeholders for PII (`<EMAIL_1>`), and putting the values back into an answer.

One `Masker` serves one request: the same value gets the same placeholder everywhere in
the conversation (the model can still tell two people's addresses apart and refer to
them), and the mapping exists only in this object, in the worker's memory, for the call.
Nothing writes it anywhere.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from broker.guardrails.config import ALL_PII_ENTITIES, PiiEntity
from broker.guardrails.pii import find_pii

PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*?)_(\d{1,6})>")
"""What a placeholder looks like: `<EMAIL_1>`, `<US_SSN_2>`."""
_LONGEST_PLACEHOLDER = 24


class Masker:
    """Replaces PII with placeholders and remembers, for this request only, what they hid.

    Args:
        entities: the kinds of PII to look for.
        numbers: placeholder numbers already used per kind, shared by the maskers of one
            request so two policies never hand out the same placeholder.
    """

    def __init__(self, entities: Iterable[PiiEntity] = ALL_PII_ENTITIES, *,
                 numbers: Counter[str] | None = None) -> None:
        self._entities = tuple(entities)
        self._by_value: dict[tuple[PiiEntity, str], str] = {}
        self._originals: dict[str, str] = {}
        self._numbers: Counter[str] = numbers if numbers is not None else Counter()
        self.found: Counter[PiiEntity] = Counter()
        """How many values of each kind were masked (repeats counted every time)."""

    @property
    def originals(self) -> dict[str, str]:
        """Placeholder → the value it stands for."""
        return self._originals

    def mask(self, text: str) -> str:
        """`text` with each PII value replaced by its placeholder."""
        matches = find_pii(text, self._entities)
        if not matches:
            return text
        pieces: list[str] = []
        position = 0
        for match in matches:
            value = text[match.start:match.end]
            pieces.append(text[position:match.start])
            pieces.append(self._placeholder(match.entity, value))
            self.found[match.entity] += 1
            position = match.end
        pieces.append(text[position:])
        return "".join(pieces)

    def _placeholder(self, entity: PiiEntity, value: str) -> str:
        key = (entity, value)
        known = self._by_value.get(key)
        if known is not None:
            return known
        self._numbers[entity] += 1
        placeholder = f"<{entity.upper()}_{self._numbers[entity]}>"
        self._by_value[key] = placeholder
        self._originals[placeholder] = value
        return placeholder


def restore(text: str, originals: dict[str, str]) -> tuple[str, int]:
    """`text` with known placeholders replaced by their values, and how many were."""
    if not originals or "<" not in text:
        return text, 0
    count = 0

    def back(match: re.Match[str]) -> str:
        nonlocal count
        value = originals.get(match.group())
        if value is None:  # a placeholder-looking string the model made up: left alone
            return match.group()
        count += 1
        return value

    return PLACEHOLDER.sub(back, text), count


class StreamRestorer:
    """Restores placeholders in streamed text whose pieces may split a placeholder.

    Text after the last `<` that could still become a placeholder is held back until the
    next piece (or `flush`) decides; everything else passes through at once, so the delay
    is at most one chunk and only around a `<`.
    """

    def __init__(self, originals: dict[str, str]) -> None:
        self._originals = originals
        self._held = ""
        self.restored = 0

    def feed(self, piece: str) -> str:
        """The text of `piece` that can be sent now, placeholders restored."""
        text = self._held + piece
        self._held = ""
        cut = text.rfind("<")
        if cut != -1 and ">" not in text[cut:] and len(text) - cut < _LONGEST_PLACEHOLDER \
                and re.fullmatch(r"<[A-Z0-9_]*", text[cut:]):
            text, self._held = text[:cut], text[cut:]
        restored, count = restore(text, self._originals)
        self.restored += count
        return restored

    def flush(self) -> str:
        """Whatever was held back (the stream ended)."""
        held, self._held = self._held, ""
        return held
