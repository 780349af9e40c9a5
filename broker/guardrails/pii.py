"""Offline PII detectors: a pattern finds candidates, a checksum or a parser confirms them.

Presidio is the reference for what to look for; nothing here comes from it. Where a value
carries a check digit it is verified, so a random digit string is not taken for a card:
payment cards (Luhn, plus a first digit of a real scheme), IBANs (ISO 13616 mod 97 and the
country's length), US social security numbers (the ranges never issued excluded), Spanish
DNI/NIE (the mod-23 letter), Dutch BSN (the "elfproef"). IP addresses are confirmed by
`ipaddress`; e-mail and phone numbers by their shape (phones: 8 to 15 digits, E.164's
maximum, in international or grouped national form).

Person names are not detected: that needs an NLP model, and the official spaCy pipelines
are not on PyPI (only placeholders and re-uploads of unknown provenance), so none installs
from the registries this project may use.

When matches overlap, the earlier entity of `ALL_PII_ENTITIES` wins (a card number is also
a run of digits a phone pattern would take).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from broker.guardrails.config import ALL_PII_ENTITIES, PiiEntity


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One confirmed value: where it is in the text and what it is."""

    entity: PiiEntity
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of payment card numbers."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# Lengths of the IBAN in some countries (ISO 13616 registry); others: any 15..34.
IBAN_LENGTHS = {
    "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18,
    "FR": 27, "GB": 22, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28,
    "PT": 25, "SE": 24,
}


def iban_valid(compact: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is not None and len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def us_ssn_valid(area: str, group: str, serial: str) -> bool:
    """SSA rules: area 000, 666 and 900-999, group 00 and serial 0000 are never issued;
    two numbers printed in advertisements are excluded too."""
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return f"{area}{group}{serial}" not in ("078051120", "219099999")


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def es_dni_valid(number: str, letter: str) -> bool:
    """Spanish DNI (8 digits) or NIE (X/Y/Z + 7 digits): the letter is the number mod 23."""
    digits = str("XYZ".index(number[0])) + number[1:] if number[0] in "XYZ" else number
    return _DNI_LETTERS[int(digits) % 23] == letter.upper()


def nl_bsn_valid(digits: str) -> bool:
    """Dutch BSN, the "elfproef": weights 9..2 and -1, the sum divisible by 11."""
    if len(digits) != 9 or digits == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True))
    return (total - int(digits[8])) % 11 == 0


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                    r"\.[A-Za-z]{2,24}(?![\w-])")
_CARD = re.compile(r"(?<![\d-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])")
_DNI = re.compile(r"(?<![\w-])([XYZ]\d{7}|\d{8})-?([A-Za-z])(?![\w-])")
_BSN = re.compile(r"(?<![\d.-])\d{4}\.?\d{2}\.?\d{3}(?![\d.-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
                   r"(?:%\w+)?(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:])")
_PHONE_INTL = re.compile(r"(?<![\w+])(?:\+|00)[1-9][\d ().-]{6,22}\d(?!\w)")
_PHONE_NATIONAL = re.compile(r"(?<![\w+])(?:\(\d{2,5}\)|\d{2,5})[ .-]\d{3,4}[ .-]\d{3,4}"
                             r"(?:[ .-]\d{2,4})?(?!\w)")

Finder = Callable[[str], Iterator[tuple[int, int]]]


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for match in _EMAIL.finditer(text):
        yield match.span()


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for match in _CARD.finditer(text):
        digits = _digits(match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            yield match.span()


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for match in _IBAN.finditer(text):
        raw = match.group()
        compact = raw.replace(" ", "")
        length = IBAN_LENGTHS.get(compact[:2], len(compact))
        if iban_valid(compact[:length]):
            # The pattern may have run on into a following capitalised word: end the span
            # after the country's length of characters.
            seen, end = 0, 0
            for end, char in enumerate(raw, start=1):  # noqa: B007  (end is used after)
                seen += char != " "
                if seen == length:
                    break
            yield match.start(), match.start() + end


def _ssns(text: str) -> Iterator[tuple[int, int]]:
    for match in _SSN.finditer(text):
        if us_ssn_valid(match.group(1), match.group(3), match.group(4)):
            yield match.span()


def _dnis(text: str) -> Iterator[tuple[int, int]]:
    for match in _DNI.finditer(text):
        if es_dni_valid(match.group(1), match.group(2)):
            yield match.span()


def _bsns(text: str) -> Iterator[tuple[int, int]]:
    for match in _BSN.finditer(text):
        if nl_bsn_valid(_digits(match.group())):
            yield match.span()


def _ipv4s(text: str) -> Iterator[tuple[int, int]]:
    for match in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        yield match.span()


def _ipv6s(text: str) -> Iterator[tuple[int, int]]:
    for match in _IPV6.finditer(text):
        candidate = match.group()
        if candidate.count(":") < 2 or not any(c.isalnum() for c in candidate):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield match.span()


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for pattern, shortest in ((_PHONE_INTL, 8), (_PHONE_NATIONAL, 9)):
        for match in pattern.finditer(text):
            if shortest <= len(_digits(match.group())) <= 15:
                yield match.span()


FINDERS: dict[PiiEntity, Finder] = {
    "email": _emails, "card": _cards, "iban": _ibans, "us_ssn": _ssns, "es_dni": _dnis,
    "nl_bsn": _bsns, "ipv6": _ipv6s, "ipv4": _ipv4s, "phone": _phones,
}


# What each entity cannot do without, and how far around it a value may reach.
_TRIGGERS: dict[PiiEntity, re.Pattern[str]] = {
    "email": re.compile("@"), "ipv6": re.compile(":"),
    **{entity: re.compile(r"\d") for entity in ALL_PII_ENTITIES
       if entity not in ("email", "ipv6")},
}
_REACH = 80
_SHORT_TEXT = 512


def _windows(text: str, trigger: re.Pattern[str]) -> list[tuple[int, int]]:
    """Stretches of `text` around each trigger character, widened to whitespace (so no
    pattern's look-behind or look-ahead sees a cut word) and merged when they overlap."""
    windows: list[tuple[int, int]] = []
    for match in trigger.finditer(text):
        start = max(0, match.start() - _REACH)
        end = min(len(text), match.end() + _REACH)
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    widened: list[tuple[int, int]] = []
    for start, end in windows:
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        while end < len(text) and not text[end].isspace():
            end += 1
        if widened and start <= widened[-1][1]:
            widened[-1] = (widened[-1][0], end)
        else:
            widened.append((start, end))
    return widened


def _spans(entity: PiiEntity, text: str) -> Iterator[tuple[int, int]]:
    """Where `entity` occurs; a long text is searched only near the characters it needs."""
    if len(text) <= _SHORT_TEXT:
        if _TRIGGERS[entity].search(text):
            yield from FINDERS[entity](text)
        return
    for start, end in _windows(text, _TRIGGERS[entity]):
        for found_start, found_end in FINDERS[entity](text[start:end]):
            yield start + found_start, start + found_end


def find_pii(text: str, entities: Iterable[PiiEntity] = ALL_PII_ENTITIES) -> list[PiiMatch]:
    """Confirmed PII in `text`, in text order, without overlaps.

    Entities are tried in `ALL_PII_ENTITIES` order; a match overlapping one already taken
    is dropped, so the more specific (checksummed) entity wins.
    """
    wanted = set(entities)
    taken: list[PiiMatch] = []
    for entity in ALL_PII_ENTITIES:
        if entity not in wanted:
            continue
        for start, end in _spans(entity, text):
            if all(end <= other.start or start >= other.end for other in taken):
                taken.append(PiiMatch(entity, start, end))
    return sorted(taken, key=lambda match: match.start)
