"""Estimates count everything a request carries: images, audio, tools, schemas, choices."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from broker.config import parse_config
from broker.estimates import Estimator
from broker.media_tokens import (
    DEAREST_IMAGE_TOKENS,
    audio_tokens,
    image_size,
    image_tokens,
    tile_tokens,
)
from broker.tokens import count_chat_prompt_tokens, count_request_prompt_tokens, encoding_for_model
from schemas import ChatCompletionRequest

MODEL = "gpt-4o"


def _png(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", width, height) + \
        b"\x08\x02\x00\x00\x00"


def _data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


@pytest.mark.parametrize(("width", "height", "tokens"), [
    (1024, 1024, 765),  # OpenAI's own examples: 768x768 after scaling, 4 tiles
    (2048, 4096, 1105),  # 768x1536, 6 tiles
    (512, 512, 255),  # small: 1 tile, never scaled up
    (4000, 500, 85 + 170 * 4),  # 2048x256: 4x1 tiles
])
def test_openais_tile_formula(width: int, height: int, tokens: int) -> None:
    assert tile_tokens(width, height) == tokens


def test_image_sizes_are_read_from_data_url_headers() -> None:
    gif = b"GIF89a" + struct.pack("<HH", 300, 200) + b"\x00" * 8
    jpeg = (b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"\x00" * 14
            + b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 600, 800) + b"\x00" * 8)
    webp = b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (1279).to_bytes(3, "little") \
        + (719).to_bytes(3, "little")
    assert image_size(_png(10, 20)) == (10, 20)
    assert image_size(gif) == (300, 200)
    assert image_size(jpeg) == (800, 600)
    assert image_size(webp) == (1280, 720)
    assert image_tokens(_data_url(_png(1024, 1024)), "high") == 765
    assert image_tokens(_data_url(_png(1024, 1024)), None) == 765  # auto may pick high
    assert image_tokens(_data_url(_png(4096, 4096)), "low") == 85
    # Not fetched: the dearest size an image can have after scaling.
    assert image_tokens("https://example.com/cat.png", "auto") == DEAREST_IMAGE_TOKENS == 1445


def test_audio_is_ten_tokens_a_second() -> None:
    samples = b"\x00\x00" * 16_000  # one second, 16 kHz, 16-bit mono
    header = (b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, 16_000, 32_000, 2, 16)
              + b"data" + struct.pack("<I", len(samples)))
    assert audio_tokens(base64.b64encode(header + samples).decode(), "wav") == 10
    three_seconds_of_mp3 = base64.b64encode(b"\x00" * 48_000).decode()  # 128 kbit/s
    assert audio_tokens(three_seconds_of_mp3, "mp3") == 30


def _request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi there."}], **fields})


def test_tools_schemas_tool_calls_and_media_are_counted_by_hand() -> None:
    count = encoding_for_model(MODEL).count
    plain = count_chat_prompt_tokens(_request().messages, MODEL)
    function = {"name": "weather", "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    tools = _request(tools=[{"type": "function", "function": function}])
    compact = json.dumps(function, separators=(",", ":"))
    assert count_request_prompt_tokens(tools, MODEL) == plain + 8 + count(compact)
    schema = {"name": "answer", "schema": {"type": "object"}}
    structured = _request(response_format={"type": "json_schema", "json_schema": schema})
    assert count_request_prompt_tokens(structured, MODEL) == \
        plain + 8 + count(json.dumps(schema, separators=(",", ":")))
    called = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]}]})
    assert count_chat_prompt_tokens(called.messages, MODEL) == (
        plain + 3 + count("assistant") + count("weather") + count('{"city":"Oslo"}'))
    with_image = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Hi there."},
            {"type": "image_url", "image_url": {"url": _data_url(_png(1024, 1024))}}]}]})
    assert count_chat_prompt_tokens(with_image.messages, MODEL) == plain + 765


def test_estimates_hold_output_for_every_choice_and_count_the_whole_request() -> None:
    config = parse_config({"models": {"m": {"deployments": ["d"]}}, "deployments": {
        "d": {"provider": "simulated", "model": MODEL, "expected_output_tokens": 100}}})
    body = _request(n=3, tools=[{"type": "function", "function": {"name": "f"}}])
    estimate = Estimator(config).for_call(body, "m", "d")
    assert estimate.output_tokens == 300
    assert estimate.prompt_tokens == count_request_prompt_tokens(body, MODEL)
    assert estimate.prompt_tokens > count_chat_prompt_tokens(body.messages, MODEL)
