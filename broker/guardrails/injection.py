"""Offline prompt-injection screening: scored heuristics, no model.

Each rule that fires adds its weight; weights combine like independent evidence
(`1 - prod(1 - w)`), so two medium signals outweigh one, and no pile of weak ones reaches
1. The rules:

- `instruction_override`: "ignore the previous instructions" and its kin, in English,
  German, French, Spanish, Italian, Portuguese and Dutch;
- `system_prompt_leak`: asking for the system prompt or hidden instructions;
- `role_impersonation`: "you are now DAN", developer/jailbreak modes, a `system:` line
  typed into a user message;
- `delimiter_attack`: chat-template tokens (`<|im_start|>`, `[INST]`, `</s>`) or fake
  end-of-input markers, which try to close the user's turn and open another;
- `encoded_payload`: base64 that decodes to one of the above (weighted high), or text
  hidden in zero-width or Unicode tag characters.

Text is NFKC-normalised and stripped of invisible characters before matching, so full-width
letters or a zero-width joiner inside "ignore" do not slip past. No classifier: the
prompt-injection models on PyPI are wrappers that download weights from a model hub at run
time, which this project's machines cannot reach.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

_INVISIBLE = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff\U000e0000-\U000e007f]")
_OVERRIDE = re.compile(
    r"\b(?:ignore|disregard|forget|override|skip|bypass)\b[^.\n]{0,40}?"
    r"\b(?:previous|prior|above|earlier|preceding|all|any|your|the|system)\b[^.\n]{0,30}?"
    r"\b(?:instructions?|prompts?|rules?|directions?|guidelines?|context|messages?)\b"
    r"|\bignoriere?\b[^.\n]{0,40}\b(?:anweisungen|regeln|instruktionen|vorgaben)\b"
    r"|\bvergiss\b[^.\n]{0,40}\b(?:anweisungen|regeln|alles)\b"
    r"|\b(?:ignore[rz]?|oublie[rz]?)\b[^.\n]{0,40}\b(?:instructions|consignes|r[eè]gles)\b"
    r"|\b(?:ignora|olvida|ignore|esque[cç]a)\b[^.\n]{0,40}"
    r"\b(?:instrucciones|instru[cç][oõ]es|istruzioni|reglas|regras|regole)\b"
    r"|\bnegeer\b[^.\n]{0,40}\b(?:instructies|regels)\b"
    r"|\bnew instructions?\s*:",
)
_LEAK = re.compile(
    r"\b(?:reveal|print|show|repeat|output|display|tell me|give me|what (?:is|are))\b"
    r"[^.\n]{0,30}\b(?:system prompt|initial (?:prompt|instructions)|hidden instructions|"
    r"developer (?:message|prompt)|your (?:instructions|prompt|rules))\b"
    r"|\b(?:zeige?|verrate)\b[^.\n]{0,30}\bsystem-?prompt\b",
)
_ROLE = re.compile(
    r"\byou are (?:now )?(?:dan|an? unrestricted|an? unfiltered|jailbroken|free of)\b"
    r"|\b(?:developer|god|jailbreak|dan) mode\b"
    r"|\bact as\b[^.\n]{0,40}\b(?:without (?:any )?(?:restrictions|limits|filters)|"
    r"no (?:restrictions|limits|filters))\b"
    r"|\bpretend (?:you (?:have|are)|to be)\b[^.\n]{0,40}\b(?:no|without) (?:rules|restrictions)\b"
    r"|^[ \t]*(?:\[?system\]?|#{1,3} ?system)[ \t]*:[ \t]*\S"
    r"|<\|im_start\|>\s*system\b|<\|start_header_id\|>\s*system\b",
    re.MULTILINE,
)
_DELIMITER = re.compile(
    r"<\|(?:im_start|im_end|endoftext|system|user|assistant|eot_id|start_header_id)\|>"
    r"|\[/?INST\]|<</?SYS>>|</s>"
    r"|(?:^|\n)\s*[-=#*]{3,}\s*(?:end of (?:user )?(?:input|prompt|message)|new (?:task|"
    r"instructions?|system prompt)|begin (?:system|admin))\b",
    re.IGNORECASE,
)
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{32,}={0,2}(?![A-Za-z0-9+/=])")

WEIGHTS = {
    "instruction_override": 0.7,
    "system_prompt_leak": 0.5,
    "role_impersonation": 0.6,
    "delimiter_attack": 0.5,
    "encoded_payload": 0.7,
    "hidden_text": 0.4,
}


@dataclass(frozen=True, slots=True)
class InjectionVerdict:
    """The score of one text (0 clean .. 1 certain) and the rules that fired."""

    score: float
    rules: tuple[str, ...]


def normalise(text: str) -> str:
    """NFKC, invisible characters removed, lower case: what the rules look at."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).lower()


# Words without which a rule cannot match: a substring test is far cheaper than the rule's
# regular expression, and most prompts contain none of them.
_GATES = {
    "instruction_override": ("ignor", "disregard", "forget", "override", "skip", "bypass",
                             "vergiss", "oubli", "olvida", "esque", "negeer", "instruction"),
    "system_prompt_leak": ("prompt", "instruction", "rules", "developer"),
    "role_impersonation": ("you are", " mode", "act as", "pretend", "system"),
    "delimiter_attack": ("<|", "inst]", "<<", "</s>", "---", "===", "###", "***"),
}
_RULES = {
    "instruction_override": _OVERRIDE,
    "system_prompt_leak": _LEAK,
    "role_impersonation": _ROLE,
    "delimiter_attack": _DELIMITER,
}


def _plain_rules(lowered: str) -> list[str]:
    return [rule for rule, pattern in _RULES.items()
            if any(word in lowered for word in _GATES[rule]) and pattern.search(lowered)]


def _decoded_payloads(text: str) -> list[str]:
    decoded = []
    for match in _BASE64.finditer(text):
        blob = match.group()
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            continue  # binary data (an image, a key): not an instruction
    return decoded


def score_injection(text: str) -> InjectionVerdict:
    """Score one message's text."""
    fired = _plain_rules(normalise(text))
    if _INVISIBLE.search(text) and len(_INVISIBLE.findall(text)) >= 4:
        fired.append("hidden_text")
    if "=" in text or len(text) >= 32:
        for payload in _decoded_payloads(text):
            if _plain_rules(normalise(payload)):
                fired.append("encoded_payload")
                break
    remaining = 1.0
    for rule in fired:
        remaining *= 1.0 - WEIGHTS[rule]
    return InjectionVerdict(round(1.0 - remaining, 4), tuple(fired))
