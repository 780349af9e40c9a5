"""Output rules: regular expressions and deny-listed phrases applied to an answer's text."""

from __future__ import annotations

import re
from collections import Counter
from functools import cached_property

from broker.guardrails.config import OutputPolicy

DENY_RULE = "deny_list"


class OutputRules:
    """The compiled rules of one policy's `output` section."""

    def __init__(self, policy: OutputPolicy) -> None:
        self.policy = policy

    @cached_property
    def _rules(self) -> list[tuple[str, re.Pattern[str]]]:
        rules = [(name, re.compile(pattern)) for name, pattern in self.policy.patterns.items()]
        if self.policy.deny:
            phrases = "|".join(re.escape(phrase) for phrase in self.policy.deny)
            rules.append((DENY_RULE, re.compile(rf"(?<!\w)(?:{phrases})(?!\w)", re.IGNORECASE)))
        return rules

    def apply(self, text: str) -> tuple[str, Counter[str]]:
        """`text` with every match replaced (redact mode's answer), and matches per rule."""
        hits: Counter[str] = Counter()
        for name, pattern in self._rules:
            text, count = pattern.subn(self.policy.replacement, text)
            if count:
                hits[name] += count
        return text, hits
