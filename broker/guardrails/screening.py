"""Apply a request's guardrail policies: its prompt before the call, its answer after.

`Guardrails.screen` runs on the prompt (injection scoring, then PII) and returns a
`Screening`: the request as it may leave (masked), the decisions so far, and the refusal
if a block rule fired. `Screening.screen_answer` runs the output rules on the answer and
puts masked values back where a policy asks for it. Pure functions of their input: the
worker calls them (`workers.inference.guardrails`), the ledger masks stored prompts with
`mask_for_storage`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from broker.guardrails.config import ALL_PII_ENTITIES, GuardrailPolicy
from broker.guardrails.injection import score_injection
from broker.guardrails.masking import Masker, StreamRestorer, restore
from broker.guardrails.output import OutputRules
from schemas import ChatCompletionRequest, ChatMessage, EmbeddingRequest, ErrorInfo
from schemas.guardrails import GuardrailAction, GuardrailDecision, GuardrailStage

BLOCKED_CODE = "guardrail_blocked"
_PII_ACTIONS: dict[str, GuardrailAction] = {"mask": "masked", "block": "blocked",
                                            "log": "logged"}
SCREENED_ROLES = frozenset({"user", "tool", "function"})
"""Whose text injection screening reads: the caller's and what tools fetched (indirect
injection); the system prompt is the operator's own."""


def blocked_error(policy: str, rule: str, stage: GuardrailStage) -> ErrorInfo:
    """The caller's 400: names the policy and the rule, never the text that matched."""
    where = "request" if stage == "input" else "answer"
    return ErrorInfo(type="invalid_request_error", code=BLOCKED_CODE,
                     message=f"Guardrail policy '{policy}' refused the {where} "
                             f"(rule '{rule}').")


@dataclass
class Screening:
    """What screening decided for one request, and what the answer still needs."""

    body: ChatCompletionRequest | EmbeddingRequest
    decisions: list[GuardrailDecision] = field(default_factory=list)
    blocked: ErrorInfo | None = None
    originals: dict[str, str] = field(default_factory=dict)
    """Placeholder → value, for the policies that restore (worker memory only)."""
    output: list[tuple[str, OutputRules]] = field(default_factory=list)
    restoring_policy: str | None = None
    """The (first) policy that restores, named by the `restored` decision."""

    @property
    def changed(self) -> bool:
        """Whether anything needs doing beyond the prompt (an answer to screen)."""
        return bool(self.originals or self.output)

    def record(self, policy: str, rule: str, action: GuardrailAction,
               stage: GuardrailStage, count: int = 1) -> None:
        """Add one decision (same policy, rule, action and stage: counts add up)."""
        for index, known in enumerate(self.decisions):
            if (known.policy, known.rule, known.action, known.stage) == (policy, rule,
                                                                         action, stage):
                self.decisions[index] = known.model_copy(update={"count": known.count + count})
                return
        self.decisions.append(GuardrailDecision(policy=policy, rule=rule, action=action,
                                                stage=stage, count=count))

    def screen_answer(self, text: str) -> str | None:
        """The answer's text after output rules and restoring; None: a rule blocks it."""
        for name, rules in self.output:
            screened, hits = rules.apply(text)
            for rule, count in hits.items():
                block = rules.policy.mode == "block"
                self.record(name, rule, "blocked" if block else "redacted", "output", count)
                if block:
                    self.blocked = blocked_error(name, rule, "output")
                    return None
            text = screened
        text, count = restore(text, self.originals)
        if count:
            self.record(self.restoring_policy or "restore", "placeholders", "restored",
                        "output", count)
        return text

    def stream_restorer(self) -> StreamRestorer | None:
        """A restorer for streamed chunks, when any policy restores."""
        return StreamRestorer(self.originals) if self.originals else None


class Guardrails:
    """The configured policies, applied by name.

    Args:
        policies: every policy of the configuration file, by name.
    """

    def __init__(self, policies: Mapping[str, GuardrailPolicy]) -> None:
        self._policies = dict(policies)
        self._output = {name: OutputRules(policy.output)
                        for name, policy in policies.items() if policy.output is not None}

    def screen(self, body: ChatCompletionRequest | EmbeddingRequest,
               names: Sequence[str]) -> Screening:
        """Screen `body` with the policies `names`, in order.

        An unknown name blocks the request (rule `unknown_policy`): a key that names a
        policy the workers do not have must not pass unscreened.
        """
        screening = Screening(body)
        numbers: Counter[str] = Counter()
        for name in dict.fromkeys(names):
            policy = self._policies.get(name)
            if policy is None:
                screening.record(name, "unknown_policy", "blocked", "input")
                screening.blocked = blocked_error(name, "unknown_policy", "input")
                return screening
            if policy.injection is not None and _injected(screening, name, policy):
                return screening
            if policy.pii is not None and _pii(screening, name, policy, numbers):
                return screening
            output = self._output.get(name)
            if output is not None:
                screening.output.append((name, output))
        return screening


def _injected(screening: Screening, name: str, policy: GuardrailPolicy) -> bool:
    """Score the caller's messages; True when the policy blocks the request."""
    assert policy.injection is not None
    body = screening.body
    if not isinstance(body, ChatCompletionRequest):
        return False
    best: float = 0.0
    rules: tuple[str, ...] = ()
    for message in body.messages:
        if message.role in SCREENED_ROLES:
            verdict = score_injection(message.text())
            if verdict.score > best:
                best, rules = verdict.score, verdict.rules
    if best < policy.injection.threshold:
        return False
    block = policy.injection.mode == "block"
    for rule in rules:
        screening.record(name, rule, "blocked" if block else "flagged", "input")
    if block:
        screening.blocked = blocked_error(name, rules[0], "input")
    return block


def _pii(screening: Screening, name: str, policy: GuardrailPolicy,
         numbers: Counter[str]) -> bool:
    """Mask, refuse or count the policy's PII; True when it blocks the request."""
    assert policy.pii is not None
    masker = Masker(policy.pii.entities, numbers=numbers)
    masked = mask_body(screening.body, masker)
    if not masker.found:
        return False
    action = _PII_ACTIONS[policy.pii.mode]
    for entity, count in masker.found.items():
        screening.record(name, entity, action, "input", count)
    if policy.pii.mode == "block":
        screening.blocked = blocked_error(name, next(iter(masker.found)), "input")
        return True
    if policy.pii.mode == "mask":
        screening.body = masked
        if policy.pii.restore:
            screening.originals.update(masker.originals)
            screening.restoring_policy = screening.restoring_policy or name
    return False


def mask_body(body: ChatCompletionRequest | EmbeddingRequest,
              masker: Masker) -> ChatCompletionRequest | EmbeddingRequest:
    """`body` with every text masked (chat contents and text parts, embedding inputs)."""
    if isinstance(body, EmbeddingRequest):
        if isinstance(body.input, str):
            return body.model_copy(update={"input": masker.mask(body.input)})
        if body.input and isinstance(body.input[0], str):
            return body.model_copy(update={"input": [masker.mask(str(x)) for x in body.input]})
        return body  # token ids: nothing readable to mask
    return body.model_copy(update={"messages": mask_messages(body.messages, masker)})


def mask_messages(messages: Iterable[ChatMessage], masker: Masker) -> list[ChatMessage]:
    """Messages with their text contents masked (other fields as they were)."""
    masked = []
    for message in messages:
        content = message.content
        if isinstance(content, str):
            message = message.model_copy(update={"content": masker.mask(content)})
        elif isinstance(content, list):
            parts = [part.model_copy(update={"text": masker.mask(part.text)})
                     if part.text else part for part in content]
            message = message.model_copy(update={"content": parts})
        masked.append(message)
    return masked


def mask_for_storage(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Messages with every kind of PII masked: what the ledger stores for a screened
    request of a tenant that keeps content (never more than a provider was sent)."""
    return mask_messages(messages, Masker(ALL_PII_ENTITIES))


class MaskedForStorage(Sequence[ChatMessage]):
    """`mask_for_storage(messages)`, computed only if someone reads it.

    The ledger builds a prompt for every request it sees but stores only those of tenants
    that keep content: the masking cost is paid for those alone.
    """

    def __init__(self, messages: Sequence[ChatMessage]) -> None:
        self._messages = messages
        self._masked: list[ChatMessage] | None = None

    def _get(self) -> list[ChatMessage]:
        if self._masked is None:
            self._masked = mask_for_storage(self._messages)
        return self._masked

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, index: int) -> ChatMessage: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ChatMessage]: ...
    def __getitem__(self, index: int | slice) -> ChatMessage | Sequence[ChatMessage]:
        return self._get()[index]
