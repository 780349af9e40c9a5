"""`sluice bench cache`: its options, and questions whose paraphrases hit only their own."""

from __future__ import annotations

import pytest

from broker.caching.embedding import SentenceEmbedder
from broker.errors import ConfigError
from sluice.cache_bench import THRESHOLD, _questions
from sluice.cli import build_parser


def test_the_cache_bench_is_a_subcommand_with_its_options() -> None:
    args = build_parser().parse_args(["bench", "cache", "--requests", "30", "--kafka", "tansu"])
    assert (args.bench_command, args.requests, args.warmup, args.kafka) == (
        "cache", 30, 20, "tansu")
    assert callable(args.handler)


def test_questions_are_distinct_and_bounded() -> None:
    pairs = _questions(120)
    assert len({question for question, _ in pairs}) == 120
    with pytest.raises(ConfigError):
        _questions(10_000)


def test_each_paraphrase_is_nearest_to_its_own_question_above_the_threshold() -> None:
    # What the bench's semantic figures rest on: every paraphrase hits, and hits its own.
    pairs = _questions(120)
    embedder = SentenceEmbedder.load()
    questions = embedder.embed([question for question, _ in pairs])
    paraphrases = embedder.embed([paraphrase for _, paraphrase in pairs])
    scores = paraphrases @ questions.T
    assert (scores.argmax(axis=1) == range(len(pairs))).all()
    assert scores.diagonal().min() >= THRESHOLD
