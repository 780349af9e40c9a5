"""Guardrails around the worker's processor: what the provider receives, what comes back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from broker.config import SluiceConfig, parse_config
from broker.errors import ProviderRetriable
from schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    CompletionMessage,
    EmbeddingRequest,
    InferenceRequest,
    RequestStatus,
    Usage,
)
from workers.inference.processor import RequestProcessor
from workers.providers import ProviderResponse
from workers.providers.base import ChunkSink

NOW = datetime(2030, 1, 1, tzinfo=UTC)
EMAIL = "jane.doe@example.com"


class EchoProvider:
    """Answers with the last message's text; remembers every body it was sent."""

    name = "echo"
    deployment = "d"

    def __init__(self, fail: bool = False) -> None:
        self.bodies: list[ChatCompletionRequest] = []
        self.fail = fail

    def _answer(self, body: ChatCompletionRequest) -> ProviderResponse:
        text = "You said: " + body.messages[-1].text()
        completion = ChatCompletion(id="c", created=0, model="up", choices=[
            Choice(message=CompletionMessage(content=text))],
            usage=Usage(prompt_tokens=5, completion_tokens=5, total_tokens=10))
        return ProviderResponse(completion, None, 1.0, {})

    async def complete(self, body: ChatCompletionRequest, *, timeout_s: float) -> ProviderResponse:
        self.bodies.append(body)
        if self.fail:
            raise ProviderRetriable("down", deployment="d")
        return self._answer(body)

    async def stream(self, body: ChatCompletionRequest, *, timeout_s: float,
                     on_chunk: ChunkSink) -> ProviderResponse:
        self.bodies.append(body)
        text = "You said: " + body.messages[-1].text()
        for start in range(0, len(text), 4):  # 4-character pieces split every placeholder
            await on_chunk({"choices": [{"index": 0, "delta": {"content": text[start:start + 4]},
                                         "finish_reason": None}]})
        await on_chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        return self._answer(body)

    async def embed(self, body: EmbeddingRequest, *, timeout_s: float) -> ProviderResponse:
        raise AssertionError("not used")


def _config() -> SluiceConfig:
    return parse_config({
        "models": {"m": {"deployments": ["d"], "guardrails": ["pii"]},
                   "plain": {"deployments": ["d"]}},
        "deployments": {"d": {"provider": "simulated", "model": "up"}},
        "guardrails": {
            "pii": {"pii": {"mode": "mask", "restore": True}},
            "no-cards": {"pii": {"mode": "block", "entities": ["card"]}},
            "no-tickets": {"output": {"mode": "redact", "patterns": {"ticket": r"TCK-\d+"}}},
        },
    })


def _request(text: str, model: str = "m", **fields: Any) -> InferenceRequest:
    body = ChatCompletionRequest(model=model, messages=[ChatMessage(role="user", content=text)],
                                 **({"stream": True} if fields.pop("stream", False) else {}))
    return InferenceRequest(id="req_1", model=model, body=body, created_at=NOW, **fields)


def _processor(provider: EchoProvider, **kwargs: Any) -> RequestProcessor:
    return RequestProcessor(_config(), {"d": provider}, lambda: NOW, **kwargs)


async def test_the_provider_gets_the_masked_prompt_and_the_caller_the_restored_answer() -> None:
    provider = EchoProvider()
    outcome = await _processor(provider).process(_request(f"I am {EMAIL}"))
    assert provider.bodies[0].messages[0].text() == "I am <EMAIL_1>"
    result = outcome.result
    assert result is not None and result.status is RequestStatus.SUCCEEDED
    assert isinstance(result.completion, ChatCompletion)
    assert result.completion.choices[0].message.content == f"You said: I am {EMAIL}"
    assert result.guardrails is not None
    assert [(d.policy, d.rule, d.action, d.stage) for d in result.guardrails] == [
        ("pii", "email", "masked", "input"), ("pii", "placeholders", "restored", "output")]
    assert EMAIL not in result.guardrails[0].model_dump_json()
    assert len(outcome.usage) == 1  # the call is billed as usual


async def test_a_block_policy_of_the_key_refuses_before_any_call() -> None:
    provider = EchoProvider()
    outcome = await _processor(provider).process(
        _request("card 4111 1111 1111 1111", model="plain", guardrails=["no-cards"]))
    assert provider.bodies == [] and outcome.usage == []
    result = outcome.result
    assert result is not None and result.status is RequestStatus.FAILED
    assert result.error is not None and result.error.code == "guardrail_blocked"
    assert "4111" not in result.error.message
    assert result.guardrails is not None and result.guardrails[0].action == "blocked"


async def test_the_models_policies_apply_whatever_the_request_says() -> None:
    provider = EchoProvider()
    await _processor(provider).process(_request(f"I am {EMAIL}", guardrails=[]))
    assert EMAIL not in provider.bodies[0].model_dump_json()


async def test_an_output_rule_redacts_the_answer() -> None:
    provider = EchoProvider()
    outcome = await _processor(provider).process(
        _request("see TCK-1234", model="plain", guardrails=["no-tickets"]))
    assert outcome.result is not None and isinstance(outcome.result.completion, ChatCompletion)
    assert outcome.result.completion.choices[0].message.content == "You said: see [REDACTED]"
    assert outcome.result.guardrails is not None
    assert outcome.result.guardrails[0].action == "redacted"


async def test_a_request_without_policies_is_untouched() -> None:
    provider = EchoProvider()
    outcome = await _processor(provider).process(_request(f"I am {EMAIL}", model="plain"))
    assert provider.bodies[0].messages[0].text() == f"I am {EMAIL}"
    assert outcome.result is not None and outcome.result.guardrails is None


async def test_a_retry_is_requeued_with_the_callers_own_body() -> None:
    outcome = await _processor(EchoProvider(fail=True)).process(_request(f"I am {EMAIL}"))
    assert outcome.retry is not None
    requeued = outcome.retry.request
    assert isinstance(requeued.body, ChatCompletionRequest)
    assert requeued.body.messages[0].text() == f"I am {EMAIL}" and requeued.attempt == 1


async def test_streamed_chunks_are_restored_even_when_a_placeholder_is_split() -> None:
    sent: list[dict[str, Any]] = []

    async def emit(request: InferenceRequest, sequence: int, chunk: dict[str, Any]) -> None:
        sent.append(chunk)

    provider = EchoProvider()
    await _processor(provider, emit=emit).process(_request(f"I am {EMAIL}", stream=True))
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in sent)
    assert streamed == f"You said: I am {EMAIL}"
