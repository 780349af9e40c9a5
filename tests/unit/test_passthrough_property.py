"""Property: any request body is either forwarded exactly or refused naming its field."""

from __future__ import annotations

import re
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.config import DeploymentConfig
from broker.errors import InvalidRequest
from ingress.body import validate_body
from schemas import ChatCompletionRequest
from workers.providers import OpenAICompatibleProvider

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False, width=32),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=8,
)
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
        {"url": st.sampled_from(["https://x/y.png", "data:image/png;base64,AA==", ""])},
        optional={"detail": st.sampled_from(["low", "high", "auto"])})}),
    st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": st.fixed_dictionaries(
        {"data": st.just("UklGRg=="), "format": st.sampled_from(["wav", "mp3"])})}),
    st.fixed_dictionaries({"type": st.sampled_from(["file", "image_url", "text", "new_kind"])},
                          optional={"file": JSON}),
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard"])},
    optional={"content": st.none() | st.text(max_size=12) | st.lists(PART, max_size=3)
              | st.integers(),
              "name": st.text(max_size=5), "tool_call_id": st.text(max_size=5)},
)
OPTIONAL = {
    "max_tokens": st.integers(-2, 50) | st.text(max_size=3) | st.sampled_from(["16", "1"]),
    "stream": st.sampled_from([False, "yes", 1, None]),
    "max_completion_tokens": st.integers(0, 50),
    "n": st.integers(-1, 4),
    "temperature": JSON, "seed": JSON, "logprobs": JSON, "top_logprobs": JSON,
    "logit_bias": JSON, "stop": JSON, "reasoning_effort": JSON, "metadata": JSON,
    "service_tier": JSON, "store": JSON, "prediction": JSON, "modalities": JSON,
    "tool_choice": JSON, "parallel_tool_calls": JSON, "user": st.text(max_size=4) | JSON,
    "tools": st.lists(st.fixed_dictionaries(
        {"type": st.just("function")},
        optional={"function": st.fixed_dictionaries(
            {"name": st.text(max_size=6)}, optional={"parameters": JSON})}), max_size=2),
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", ""])},
        optional={"json_schema": JSON}),
    "something_new": JSON,
}
BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o-mini", ""]),
     "messages": st.lists(MESSAGE, max_size=3)},
    optional=OPTIONAL,
)


def _forwarded(data: dict[str, Any]) -> dict[str, Any]:
    body = validate_body(ChatCompletionRequest, data)
    adapter = OpenAICompatibleProvider(httpx.MockTransport(lambda _: httpx.Response(500)),
                                       "d", DeploymentConfig(provider="openai", model="up",
                                                             base_url="http://up/v1"))
    return adapter._payload(body)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(BODY)
def test_a_body_is_forwarded_whole_or_refused_naming_a_field_it_has(data: dict[str, Any]) -> None:
    try:
        payload = _forwarded(data)
    except InvalidRequest as refused:
        assert refused.param is not None
        top = re.split(r"[.\[]", refused.param)[0]
        assert top in data or top == "body", (refused.param, data)
        assert refused.param in str(refused)
        return
    assert payload == {**data, "model": "up"}
