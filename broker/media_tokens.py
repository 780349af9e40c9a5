"""Prompt tokens of images and audio, before the provider has seen them.

Budgets reserve what a request may cost before it is sent, so these are upper bounds
where the exact figure cannot be known without fetching or decoding the media:

- Images follow OpenAI's tile formula for GPT-4o-class models: `detail: low` costs 85
  tokens; `high` (and `auto`, which may pick high) scales the image to fit 2048x2048,
  then its shorter side to 768, and costs 170 per 512-pixel tile plus 85. The size is
  read from a `data:` URL's PNG, GIF, JPEG or WebP header; an image behind an http(s)
  URL is not fetched, so the dearest possible size is assumed (2048x768: 8 tiles,
  1,445 tokens).
- Audio costs 10 tokens per second (OpenAI's rate for gpt-4o audio input, 600 a minute),
  the duration read from a WAV header, or from the size at 128 kbit/s for other formats.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

LOW_DETAIL_TOKENS = 85
TILE_TOKENS = 170
_TILE = 512
_FIT = 2048
_SHORT_SIDE = 768
DEAREST_IMAGE_TOKENS = LOW_DETAIL_TOKENS + TILE_TOKENS * 8
AUDIO_TOKENS_PER_SECOND = 10
_COMPRESSED_AUDIO_BYTES_PER_SECOND = 16_000  # 128 kbit/s
# Enough of a data URL to find any of the headers read here (JPEG's SOF may follow EXIF).
_HEADER_BYTES = 64 * 1024


def image_tokens(url: str, detail: str | None) -> int:
    """Prompt tokens of one `image_url` part."""
    if detail == "low":
        return LOW_DETAIL_TOKENS
    size = image_size(_data_url_head(url)) if url.startswith("data:") else None
    if size is None:
        return DEAREST_IMAGE_TOKENS
    return tile_tokens(*size)


def tile_tokens(width: int, height: int) -> int:
    """OpenAI's high-detail cost of a `width`x`height` image."""
    if width <= 0 or height <= 0:
        return DEAREST_IMAGE_TOKENS
    scale = min(1.0, _FIT / max(width, height))
    scale *= min(1.0, _SHORT_SIDE / (min(width, height) * scale))
    tiles = math.ceil(width * scale / _TILE) * math.ceil(height * scale / _TILE)
    return LOW_DETAIL_TOKENS + TILE_TOKENS * tiles


def audio_tokens(data: str, audio_format: str) -> int:
    """Prompt tokens of one `input_audio` part (`data` is base64)."""
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raw = b""
    seconds = _wav_seconds(raw) if audio_format == "wav" else None
    if seconds is None:
        seconds = len(raw) / _COMPRESSED_AUDIO_BYTES_PER_SECOND
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


def _data_url_head(url: str) -> bytes:
    _, _, payload = url.partition(",")
    head = payload[: _HEADER_BYTES * 4 // 3]
    head = head[: len(head) - len(head) % 4]
    try:
        return base64.b64decode(head, validate=False)
    except (binascii.Error, ValueError):
        return b""


def image_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from the first bytes of a PNG, GIF, JPEG or WebP file."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return int(width), int(height)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(head)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 9 <= len(head):
        if head[offset] != 0xFF:
            return None
        marker = head[offset + 1]
        length = struct.unpack(">H", head[offset + 2:offset + 4])[0]
        # Start-of-frame markers carry the size; C4 (DHT), C8 and CC (DAC) do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[offset + 5:offset + 9])
            return int(width), int(height)
        offset += 2 + length
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    return None


def _wav_seconds(raw: bytes) -> float | None:
    if len(raw) < 44 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    byte_rate: int = struct.unpack("<I", raw[28:32])[0]
    if byte_rate <= 0:
        return None
    return max(0, len(raw) - 44) / byte_rate
