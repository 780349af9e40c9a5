"""The offline PII detectors: true positives, and the checksum negatives that keep random
digits from being taken for cards, IBANs or national ids."""

from __future__ import annotations

import random

import pytest

from broker.guardrails.config import ALL_PII_ENTITIES
from broker.guardrails.pii import (
    FINDERS,
    es_dni_valid,
    find_pii,
    iban_valid,
    luhn_valid,
    nl_bsn_valid,
    us_ssn_valid,
)


def _found(text: str) -> list[tuple[str, str]]:
    return [(m.entity, text[m.start:m.end]) for m in find_pii(text)]


@pytest.mark.parametrize(("text", "entity", "value"), [
    ("write to jane.o'neil@example.co.uk please", "email", "neil@example.co.uk"),
    ("mail first.last+tag@sub.example.org.", "email", "first.last+tag@sub.example.org"),
    ("call +44 20 7946 0958 today", "phone", "+44 20 7946 0958"),
    ("call +1 (415) 555-2671 today", "phone", "+1 (415) 555-2671"),
    ("ruf 0049 30 901820 an", "phone", "0049 30 901820"),
    ("office (555) 123-4567", "phone", "(555) 123-4567"),
    ("visa 4111 1111 1111 1111 ok", "card", "4111 1111 1111 1111"),
    ("amex 378282246310005", "card", "378282246310005"),
    ("mc 5555-5555-5555-4444", "card", "5555-5555-5555-4444"),
    ("pay DE89 3704 0044 0532 0130 00 Thanks", "iban", "DE89 3704 0044 0532 0130 00"),
    ("iban GB82WEST12345698765432", "iban", "GB82WEST12345698765432"),
    ("ssn 123-45-6789", "us_ssn", "123-45-6789"),
    ("dni 12345678Z", "es_dni", "12345678Z"),
    ("nie X1234567L", "es_dni", "X1234567L"),
    ("bsn 111222333", "nl_bsn", "111222333"),
    ("host 192.168.1.20 down", "ipv4", "192.168.1.20"),
    ("v6 2001:db8::8a2e:370:7334 up", "ipv6", "2001:db8::8a2e:370:7334"),
    ("loopback ::1 and fe80::1%eth0", "ipv6", "::1"),
])
def test_true_positives(text: str, entity: str, value: str) -> None:
    assert (entity, value) in _found(text)


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert _found("card 4111 1111 1111 1112") == []


def test_iban_checksum_and_country_length() -> None:
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("DE88370400440532013000")  # one digit off: mod 97 != 1
    assert not iban_valid("DE8937040044053201300")  # Germany's IBAN has 22 characters
    assert "iban" not in [entity for entity, _ in _found("DE88 3704 0044 0532 0130 00")]


def test_ssn_ranges_never_issued() -> None:
    assert us_ssn_valid("123", "45", "6789")
    for area, group, serial in [("000", "12", "3456"), ("666", "12", "3456"),
                                ("912", "12", "3456"), ("123", "00", "4567"),
                                ("123", "45", "0000"), ("078", "05", "1120")]:
        assert not us_ssn_valid(area, group, serial)
    assert _found("ref 666-12-3456 and 912-12-3456") == []


def test_dni_and_bsn_check_digits() -> None:
    assert es_dni_valid("12345678", "Z") and not es_dni_valid("12345678", "A")
    assert nl_bsn_valid("111222333") and not nl_bsn_valid("111222334")
    assert _found("dni 12345678A, bsn 111222334") == []


def test_not_pii() -> None:
    text = ("Version 1.2.3, 10:30:00 on 2024-01-15, order #12345, 3.14159, "
            "the 999.1.1.1 thing, a@b, ratio 3:2")
    assert _found(text) == []


def test_overlaps_go_to_the_checksummed_entity() -> None:
    # A card number is also digits a phone pattern would take: the card wins.
    assert _found("4111 1111 1111 1111") == [("card", "4111 1111 1111 1111")]


def test_only_the_entities_asked_for() -> None:
    text = "a@example.com 192.168.0.1"
    assert [m.entity for m in find_pii(text, ["ipv4"])] == ["ipv4"]


def test_long_texts_searched_in_windows_find_what_a_full_search_finds() -> None:
    pieces = ["jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111",
              "DE89 3704 0044 0532 0130 00", "123-45-6789", "12345678Z", "111222333",
              "192.168.1.20", "2001:db8::1", "(555) 123-4567", "word", "the", "10:30:00",
              "v1.2.3", "#12345", "x@y", "a\nb"]
    rng = random.Random(7)
    for _ in range(100):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(60, 250)))
        assert len(text) > 512  # long enough to be searched in windows
        whole: list[tuple[str, int, int]] = []
        for entity in ALL_PII_ENTITIES:
            for start, end in FINDERS[entity](text):
                if all(end <= other[1] or start >= other[2] for other in whole):
                    whole.append((entity, start, end))
        assert [(m.entity, m.start, m.end) for m in find_pii(text)] == sorted(
            whole, key=lambda match: match[1])
